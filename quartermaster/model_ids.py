"""Model identity: which catalog model a provider's or gateway's model id names.

Real traffic rarely carries a catalog key. Providers answer with dated snapshots
(`gpt-5-2025-08-07`, `claude-opus-4-1-20250805`), gateways add routing prefixes
(`openai/gpt-5`, `azure/...`), Bedrock names models `<region>.<vendor>.<model>-v1:0`
(`us.anthropic.claude-sonnet-4-5-20250929-v1:0`), Vertex adds `@<date>`
(`claude-sonnet-4-5@20250929`), Anthropic offers `-latest`, and Azure calls a model
by the deployment name its owner chose. One resolution, used by pricing (metering)
and by model policies (policy), so a snapshot is priced and allowed as its family:

1. The id itself, when it is a key: a snapshot priced on its own keeps its own price
   (snapshots have been priced differently from their alias).
2. Each ever more normalized form of it (`candidates`): lower case, without a routing
   prefix (`openai/`, or a known provider's `openai:`), without Vertex's `@...`,
   Bedrock's region, vendor and `-vN:M`, `-latest`,
   a trailing date (`-YYYY-MM-DD`, `-YYYYMMDD`, `-MMDD`): the first that is a key,
   or an alias (`aliases`: exact ids, e.g. Azure deployment names, lower case).
3. Glob patterns (`patterns`, fnmatch on the lower-cased id), in order.

None when nothing matches: the caller's "unknown model" (metering prices it with the
fallback and flags it). The raw id is never rewritten by this module: callers keep it.

Pure: strings in, a string out. Sources for the id shapes: OpenAI's model list
(snapshots), Anthropic's models overview (dated ids, `-latest`, Bedrock and Vertex
ids), AWS Bedrock's cross-region inference profiles (`us.`, `eu.`, `apac.`,
`global.`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Container, Iterator, Mapping, Sequence

# Bedrock: an optional inference-profile region, a vendor, the model, an optional
# "-v<major>[:<minor>]" or "-<major>:<minor>" version (openai.gpt-oss-120b-1:0).
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|ap|global|us-gov|ca|jp|au)\.)?"
    r"(?:anthropic|openai|meta|amazon|mistral|cohere|ai21|deepseek|qwen|writer|google)\."
    r"(?P<model>.+?)(?:-v\d+(?::\d+)?|-\d+:\d+)?$"
)
_DATE = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
# "<provider>:<model>", as pydantic-ai and some gateways write ids (openai:gpt-5,
# anthropic:claude-sonnet-4-5). Only these names: a colon also ends Bedrock's
# "-v1:0", and OpenRouter's ":free"/":online" and fine-tunes' "ft:..." are other
# offerings, priced otherwise, which must stay unknown unless the catalog names them.
_COLON_PROVIDERS = frozenset({
    "openai", "anthropic", "azure", "bedrock", "vertex", "google-vertex", "google-gla",
    "gemini", "groq", "mistral", "cohere", "deepseek", "xai", "openrouter",
})  # fmt: skip
_LATEST = "-latest"


def candidates(raw: str) -> Iterator[str]:
    """`raw`, then each ever more normalized form of it that differs (see the module
    docstring, step 2), without repeats. A blank id yields nothing."""
    seen: set[str] = set()

    def fresh(form: str) -> bool:
        if not form or form in seen:
            return False
        seen.add(form)
        return True

    if fresh(raw):
        yield raw
    form = raw.strip().lower()
    if fresh(form):
        yield form
    form = form.rsplit("/", 1)[-1]  # openai/gpt-5, accounts/x/models/y
    if fresh(form):
        yield form
    provider, colon, rest = form.partition(":")  # openai:gpt-5
    if colon and provider in _COLON_PROVIDERS and rest:
        form = rest
        if fresh(form):
            yield form
    form = form.split("@", 1)[0]  # Vertex: claude-sonnet-4-5@20250929
    if fresh(form):
        yield form
    bedrock = _BEDROCK.match(form)
    if bedrock:
        form = bedrock["model"]
        if fresh(form):
            yield form
    if form.endswith(_LATEST):
        form = form[: -len(_LATEST)]
        if fresh(form):
            yield form
    undated = _DATE.sub("", form)
    if undated != form and fresh(undated):
        yield undated


def resolve_model(
    raw: str,
    known: Container[str],
    aliases: Mapping[str, str] | None = None,
    patterns: Sequence[tuple[str, str]] = (),
) -> str | None:
    """The key in `known` that `raw` names, or None (unknown).

    `aliases`: {lower-case id: key}; `patterns`: (fnmatch glob, key) tried in order on
    the lower-cased id, after every form. An alias or pattern may name a key that
    `known` lacks (a catalog's own concern to check)."""
    aliases = aliases or {}
    for form in candidates(raw):
        if form in known:
            return form
        key = aliases.get(form)
        if key is not None:
            return key
    lowered = raw.strip().lower()
    for glob, key in patterns:
        if fnmatch.fnmatchcase(lowered, glob):
            return key
    return None


def allows(allowed: Container[str], model: str) -> bool:
    """Whether a model policy allowing `allowed` (catalog keys) allows a call of the
    model `model` (as the caller named it): the id itself, or any of its normalized
    forms (a snapshot of an allowed family is allowed; the family is not allowed by
    allowing one snapshot)."""
    return any(form in allowed for form in candidates(model))
