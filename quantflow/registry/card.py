"""The model card: the description of a registered version, in Markdown (the MLflow UI renders it).

Lineage, the candidates the train step chose among, test metrics, the compression table, the calibration of the
served probabilities, the gate with its paired test, and how to rebuild the version.
"""

from __future__ import annotations

from typing import Any

from quantflow.core.shipped_calibration import describe
from quantflow.registry.candidate import LATENCY_KEYS, Inputs, shipped_label
from quantflow.registry.gate import fmt, gate_markdown


def _metric_rows(inputs: Inputs) -> list[str]:
    labels = (("fp32", shipped_label(inputs.metrics)), ("baseline", "TF-IDF + LR baseline (raw text)"))
    return [
        f"| {label} | {inputs.metrics[key]['accuracy']:.4f} | {inputs.metrics[key]['macro_f1']:.4f} |"
        for key, label in labels
        if key in inputs.metrics
    ]


def versus_baseline_line(metrics: dict[str, Any]) -> list[str]:
    """The shipped model against the raw-text baseline on the same test texts, when evaluate measured it."""
    vs = metrics.get("versus_baseline")
    if not vs:
        return []
    return [
        "",
        f"Shipped model minus baseline: {100 * vs['difference']:+.2f} points "
        f"[{100 * vs['ci_low']:+.2f}, {100 * vs['ci_high']:+.2f}] (paired bootstrap 95 %), exact McNemar "
        f"p = {vs['p_value']:.3g} ({vs['only_model_right']} texts only the model gets right, "
        f"{vs['only_baseline_right']} only the baseline).",
    ]


def candidates_markdown(metrics: dict[str, Any]) -> list[str]:
    """The candidates table of the run summary and the model card, from metrics.json's ``candidates`` entry:
    every candidate's validation and test scores, the winner in bold. Empty when there is none."""
    rows = metrics.get("candidates") or {}
    if not rows:
        return []
    lines = [
        "| candidate | model | val acc | val macro-F1 | test acc | test macro-F1 | fp32 size |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in rows.items():
        shown = f"**{name}** (shipped)" if c.get("winner") else name
        lines.append(
            f"| {shown} | {c['arch']} | {c['val_accuracy']:.4f} | {c['val_macro_f1']:.4f} "
            f"| {c['test_accuracy']:.4f} | {c['test_macro_f1']:.4f} | {c['size_bytes'] / 1e6:.2f} MB |"
        )
    reason = metrics.get("selection", {}).get("reason")
    return lines + ([f"\nChosen on validation: {reason}."] if reason else [])


def shipped_lines(metrics: dict[str, Any]) -> list[str]:
    """For the run summary: which candidate and family shipped, every candidate's scores, the paired test
    against the raw-text baseline (nothing for metrics written before candidates existed)."""
    model = metrics.get("model")
    if not isinstance(model, dict):
        return []
    head = f"Shipped: **{model['candidate']}** ({model['family']} family, `{model['arch']}`)."
    return [head, "", *candidates_markdown(metrics), *versus_baseline_line(metrics), ""]


def _candidates_section(inputs: Inputs) -> list[str]:
    rows = candidates_markdown(inputs.metrics)
    if not rows:
        return []
    return ["", "## Candidates (the train step ships the best on validation)", *rows]


def _variant_rows(inputs: Inputs) -> list[str]:
    """One row per compressed variant, the chosen one in bold."""
    return [
        f"| {'**' + v + '**' if v == inputs.variant else v} | {s.get('accuracy', float('nan')):.4f} | "
        f"{s.get('macro_f1', float('nan')):.4f} | {s.get('size_bytes', 0) / 1e6:.3f} MB | "
        f"{fmt(next((s[k] for k in LATENCY_KEYS if k in s), None))} |"
        for v, s in inputs.compression["variants"].items()
    ]


def calibration_lines(inputs: Inputs) -> list[str]:
    """How the version's probabilities are calibrated, and ECE, Brier and NLL on test before → after, for the
    shipped variant and (fitted alike, not stored) fp32."""
    cal = inputs.calibration
    rows = []
    for name, m in cal["models"].items():
        shown = f"**{name}** (shipped)" if name == inputs.variant else f"{name} ({m['role']})"
        b, a = m["before"], m["after"]
        rows.append(
            f"| {shown} | {b['ece']:.4f} → {a['ece']:.4f} | {b['brier']:.4f} → {a['brier']:.4f} "
            f"| {b['nll']:.4f} → {a['nll']:.4f} |"
        )
    return [
        "",
        "## Calibration (the probabilities it serves)",
        f"`{inputs.variant}` applies {describe(cal['calibration'])} to its logits (model.json's `calibration`; "
        f"fitted on {cal['fitted_on']['rows']} validation texts: {cal['choice'].get('reason', '')}).",
        "",
        "| model | ECE before → after | Brier before → after | NLL before → after |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Test split ({cal['measured_on']['rows']} texts), ECE over {cal['bins']} equal-width bins of the top "
        "probability; reliability diagram: run artifact `reports/plots/calibration_reliability.png`.",
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
            *_candidates_section(inputs),
            "",
            f"## Metrics on the test split ({len(inputs.texts)} texts)",
            "| model | accuracy | macro-F1 |",
            "|---|---|---|",
            *_metric_rows(inputs),
            *versus_baseline_line(inputs.metrics),
            "",
            "## Compression (chosen variant in bold)",
            "| variant | accuracy | macro-F1 | size | latency ms |",
            "|---|---|---|---|---|",
            *_variant_rows(inputs),
            *calibration_lines(inputs),
            "",
            "## Data version and lineage",
            "| key | value |",
            "|---|---|",
            *lineage_rows,
            "",
            f"Rebuild it: `quantflow reproduce --version {version}`.",
        ]
    )
