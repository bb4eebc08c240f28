"""metering's Postgres edge, one store per area: counting state (offset fence, totals,
seen ids), rollups, the price catalog, and the Cost API's reads."""
