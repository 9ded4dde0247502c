"""The model card: the description of a registered version, in Markdown (the MLflow UI renders it).

Lineage, test metrics, the compression table, the gate with its paired test, and how to rebuild the version.
"""

from __future__ import annotations

from typing import Any

from quantflow.registry.candidate import LATENCY_KEYS, Inputs
from quantflow.registry.gate import fmt, gate_markdown


def _metric_rows(inputs: Inputs) -> list[str]:
    return [
        f"| {label} | {inputs.metrics[key]['accuracy']:.4f} | {inputs.metrics[key]['macro_f1']:.4f} |"
        for key, label in (("fp32", "PyTorch fp32"), ("baseline", "TF-IDF + LR baseline"))
        if key in inputs.metrics
    ]


def _variant_rows(inputs: Inputs) -> list[str]:
    """One row per compressed variant, the chosen one in bold."""
    return [
        f"| {'**' + v + '**' if v == inputs.variant else v} | {s.get('accuracy', float('nan')):.4f} | "
        f"{s.get('macro_f1', float('nan')):.4f} | {s.get('size_bytes', 0) / 1e6:.3f} MB | "
        f"{fmt(next((s[k] for k in LATENCY_KEYS if k in s), None))} |"
        for v, s in inputs.compression["variants"].items()
    ]


def model_card(name: str, version: str, inputs: Inputs, gate: dict[str, Any], tags: dict[str, str]) -> str:
    """The version's description: lineage, metrics, compression table, gate, paired test, how to rebuild."""
    lineage_rows = [
        f"| {k} | `{v}` |" for k, v in sorted(tags.items()) if not k.startswith(("gate.", "quantflow."))
    ]
    return "\n".join(
        [
            f"# {name} v{version}: model card",
            "",
            gate_markdown(gate, inputs.variant, tags.get("params_digest", "?")),
            "",
            f"## Metrics on the test split ({len(inputs.texts)} texts)",
            "| model | accuracy | macro-F1 |",
            "|---|---|---|",
            *_metric_rows(inputs),
            "",
            "## Compression (chosen variant in bold)",
            "| variant | accuracy | macro-F1 | size | latency ms |",
            "|---|---|---|---|---|",
            *_variant_rows(inputs),
            "",
            "## Data version and lineage",
            "| key | value |",
            "|---|---|",
            *lineage_rows,
            "",
            f"Rebuild it: `quantflow reproduce --version {version}`.",
        ]
    )
