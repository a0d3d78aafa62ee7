"""Prices per model (USD per 1M input and per 1M output tokens) and the cost of one call.

Local models have no invoice, so corea prices them by compute: a decoder spends about 2·N FLOPs per
token for N parameters, so a token's cost is taken proportional to the parameter count, at
`RATE_PER_BILLION_PARAMS` dollars per 1M tokens per billion parameters (input; output is priced
`OUTPUT_MULTIPLIER` times higher, as hosted APIs do, because decoding is sequential while the
prompt is processed in parallel). Savings are ratios of costs, so they depend on the parameter ratio
of the two models and the input/output mix, not on the reference rate. A user with real prices
passes a price table (JSON: {"model name": {"input": 0.2, "output": 0.6}}) or --price-in/--price-out.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from corea import embedded

RATE_PER_BILLION_PARAMS = 0.10  # USD per 1M input tokens per billion parameters
OUTPUT_MULTIPLIER = 3.0


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def __post_init__(self):
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError("prices cannot be negative")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million
                + completion_tokens * self.output_per_million) / 1e6

    def to_dict(self) -> dict:
        return {"input": self.input_per_million, "output": self.output_per_million}

    @classmethod
    def from_dict(cls, data: dict) -> "Price":
        try:
            return cls(float(data["input"]), float(data["output"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a price needs numeric 'input' and 'output' (USD per 1M tokens), "
                             f"got {data!r}") from error


def price_from_params(params_billion: float) -> Price:
    rate = RATE_PER_BILLION_PARAMS * params_billion
    return Price(round(rate, 6), round(rate * OUTPUT_MULTIPLIER, 6))


def default_price(model_name: str) -> Price | None:
    """The compute-based price of an embedded model (with or without an adapter: a LoRA adds
    little compute), or None for a model corea knows nothing of."""
    from corea.program import base_spec

    # A program-aided model costs what its model costs per token.
    model = embedded.resolve_embedded(base_spec(model_name).split("+")[0])
    return price_from_params(model.params_billion) if model else None


def load_price_table(path: str | Path) -> dict[str, Price]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read price table {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"price table {path} must map model names to {{input, output}}")
    return {name: Price.from_dict(entry) for name, entry in data.items()}


def resolve_price(model_name: str, table: dict[str, Price] | None = None,
                  override: Price | None = None) -> Price:
    """The price to charge: an explicit override, then the table, then the compute-based default.

    A model with none of these is charged nothing, and a warning says so, since its cost column
    would otherwise mislead.
    """
    if override is not None:
        return override
    if table and model_name in table:
        return table[model_name]
    price = default_price(model_name)
    if price is None:
        print(f"warning: no price known for {model_name!r}; its calls cost 0. "
              "Pass --price-in/--price-out or a price table.", file=sys.stderr)
        return Price(0.0, 0.0)
    return price
