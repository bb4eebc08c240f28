"""metering: turns raw usage events into exact, priced, windowed totals."""
