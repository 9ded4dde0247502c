"""A fitted classic model (quantflow/core/classic.py) as an ONNX graph of standard operators, its model folder
and its int8 variant.

The graph, ``ids`` (B, T) int64 → ``logits`` (B, C) float32, batch and sequence axes dynamic::

    Slice ids[:, :max_len]                                         (B, T') the tokenizer's cap, as in training
    → TfIdfVectorizer, int64 pool of 1..ngram_max-grams            (B, F) x = tf · idf
        mode TFIDF, weights idf;  sublinear_tf: mode TF, then Relu((Log(c) + 1) · idf) = (1 + log c) · idf, 0 at c = 0
    → ReduceL2 → Max(·, eps)                                       (B, 1) |x|
    → Gemm(x, W) ÷ |x| + b                                         (B, K) = (x / |x|) W + b, NB ratios folded into W
    → logits: 2 classes [0, z] (Mul by [0, 1]); multinomial z; one-vs-rest log σ(z) = -Softplus(-z)

so ``softmax(logits)`` is scikit-learn's ``predict_proba`` in each case. Padding (id 0) is in no pooled n-gram,
so it counts nothing and a padded row scores as the unpadded one. A row with no known n-gram has norm 0:
scikit-learn leaves it at 0, and so does 0 / eps (any other row's norm is at least 1: tf ≥ 1 and idf ≥ 1).
Dividing the (B, K) scores rather than the (B, F) features saves a pass over the widest tensor: the elementwise
passes over (B, F) are what the graph spends its time on.

The folder (``model.onnx``, ``model.json``, tokenizer files) is what
:class:`quantflow.core.onnx_model.OnnxClassifier` loads, so the service, ``quantflow predict`` and the MLflow
pyfunc serve it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantflow.core.bundle import Manifest, copy_tokenizer, library_versions
from quantflow.core.classic import ClassicFit
from quantflow.core.onnx_model import INPUT_NAME, MODEL_FILE
from quantflow.core.text import TokenizerConfig

CLASSIC_FAMILY = "classic"  # model.json config["family"]; a neural model's config has no "family"
OPSET = 18  # as the neural exports (tasks/compress.py)
OUTPUT_NAME = "logits"
NORM_EPS = 1e-12
FP32_VARIANT = "fp32"
INT8_VARIANT = "int8-static"


def ngram_pool(grams: list[tuple[int, ...]], ngram_max: int) -> tuple[list[int], list[int], list[int]]:
    """TfIdfVectorizer's ``pool_int64s``, ``ngram_counts`` and ``ngram_indexes`` for feature columns ``grams``.

    The pool lists all 1-grams, then all 2-grams, ...; ``ngram_counts[n-1]`` is where the n-grams start in it;
    ``ngram_indexes[k]`` is the output column of the pool's k-th n-gram (scikit-learn's column order kept).
    """
    order = sorted(range(len(grams)), key=lambda j: (len(grams[j]), grams[j]))
    pool: list[int] = []
    counts: list[int] = []
    for n in range(1, ngram_max + 1):
        counts.append(len(pool))
        pool.extend(i for j in order if len(grams[j]) == n for i in grams[j])
    return pool, counts, order


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _counting_nodes(fit: ClassicFit) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """ids → (B, F) TF-IDF before the norm; returns nodes, initializers and the output's name."""
    settings = fit.settings
    pool, counts, indexes = ngram_pool(fit.ngrams(), settings.ngram_max)
    idf = fit.vectorizer.idf_.astype(np.float32)
    inits = [
        _const("starts", np.array([0], np.int64)),
        _const("ends", np.array([fit.max_len], np.int64)),
        _const("seq_axis", np.array([1], np.int64)),
    ]
    nodes = [helper.make_node("Slice", [INPUT_NAME, "starts", "ends", "seq_axis"], ["kept"])]
    tfidf = dict(
        max_gram_length=settings.ngram_max,
        min_gram_length=1,
        max_skip_count=0,
        ngram_counts=counts,
        ngram_indexes=indexes,
        pool_int64s=pool,
    )
    if not settings.sublinear_tf:  # count · weight, weights listed in pool order (not output column order)
        weights = idf[indexes].tolist()
        nodes.append(
            helper.make_node("TfIdfVectorizer", ["kept"], ["tfidf"], mode="TFIDF", weights=weights, **tfidf)
        )
        return nodes, inits, "tfidf"
    # 1 + log c where c > 0, else 0: Log(0) = -inf stays -inf through + 1 and · idf (idf >= 1), and Relu
    # makes it 0; 4 passes over the (B, F) tensor (the widest of the graph) where Min/Max/Log/Add/Mul take 5
    inits += [_const("one", np.array(1.0, np.float32)), _const("idf", idf)]
    nodes += [
        helper.make_node("TfIdfVectorizer", ["kept"], ["counts"], mode="TF", **tfidf),
        helper.make_node("Log", ["counts"], ["log_count"]),
        helper.make_node("Add", ["log_count", "one"], ["sublinear"]),
        helper.make_node("Mul", ["sublinear", "idf"], ["signed_tfidf"]),
        helper.make_node("Relu", ["signed_tfidf"], ["tfidf"]),
    ]
    return nodes, inits, "tfidf"


def _norm_node(source: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """(B, F) → (B, 1) L2 norm, at least ``eps``: sklearn leaves an all-zero row at 0, so does 0 / eps."""
    inits = [_const("feature_axis", np.array([1], np.int64)), _const("eps", np.array(NORM_EPS, np.float32))]
    nodes = [
        helper.make_node("ReduceL2", [source, "feature_axis"], ["norm"], keepdims=1),  # (B, 1)
        helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
    ]
    return nodes, inits, "safe_norm"


def _linear_nodes(
    fit: ClassicFit, source: str, norm: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(B, F) TF-IDF → Gemm → ÷ norm → + bias → ``logits`` (B, C), whose softmax is the model's predict_proba.

    ``(x / |x|) W + b = (x W) / |x| + b``: dividing the (B, K) scores instead of the (B, F) features saves a
    pass over the widest tensor of the graph.
    """
    coef, bias = fit.linear()  # (K, F), (K,)
    inits = [_const("weight", coef.T.astype(np.float32)), _const("bias", bias.astype(np.float32))]
    nodes = [
        helper.make_node("Gemm", [source, "weight"], ["raw_scores"]),  # (B, K)
        helper.make_node("Div", ["raw_scores", norm], ["normalized_scores"]),
        helper.make_node("Add", ["normalized_scores", "bias"], ["scores"]),
    ]
    if fit.num_classes == 2:  # one score z: logits [0, z], softmax = [1 - σ(z), σ(z)]
        inits.append(_const("binary_mask", np.array([0.0, 1.0], np.float32)))
        nodes.append(helper.make_node("Mul", ["scores", "binary_mask"], [OUTPUT_NAME]))
    elif fit.ratios is None:  # multinomial: the scores are the logits
        nodes.append(helper.make_node("Identity", ["scores"], [OUTPUT_NAME]))
    else:  # one-vs-rest: logits log σ(z) = -softplus(-z), softmax = σ(z) / Σ σ(z)
        nodes += [
            helper.make_node("Neg", ["scores"], ["neg_scores"]),
            helper.make_node("Softplus", ["neg_scores"], ["softplus"]),
            helper.make_node("Neg", ["softplus"], [OUTPUT_NAME]),
        ]
    return nodes, inits


def classic_graph(fit: ClassicFit) -> onnx.ModelProto:
    """The checked ONNX model of a fitted classic model (standard ``ai.onnx`` operators only)."""
    count_nodes, count_inits, tfidf = _counting_nodes(fit)
    norm_nodes, norm_inits, norm = _norm_node(tfidf)
    linear_nodes, linear_inits = _linear_nodes(fit, tfidf, norm)
    graph = helper.make_graph(
        count_nodes + norm_nodes + linear_nodes,
        f"quantflow_{fit.model}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", fit.num_classes])],
        initializer=count_inits + norm_inits + linear_inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantflow.core.classic_onnx"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def classic_config(fit: ClassicFit) -> dict[str, Any]:
    """``model.json``'s config: the architecture under ``arch`` (as the torch models' ModelConfig) and the settings."""
    coef, _ = fit.linear()
    return {
        "arch": fit.model,
        "family": CLASSIC_FAMILY,
        "num_classes": fit.num_classes,
        "max_len": fit.max_len,
        "features": int(coef.shape[1]),
        **fit.settings.model_dump(),
    }


def export_classic(fit: ClassicFit, out_path: Path) -> Path:
    """Write the fitted model's ONNX graph to ``out_path`` (one self-contained file)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(classic_graph(fit), out_path, save_as_external_data=False)
    return out_path


def save_classic_folder(
    fit: ClassicFit,
    folder: Path,
    labels: list[str],
    tokenizer_dir: Path,
    variant: str = FP32_VARIANT,
    metrics: dict[str, float] | None = None,
) -> Path:
    """A model folder :class:`~quantflow.core.onnx_model.OnnxClassifier` loads: model.onnx, model.json, tokenizer.

    ``labels`` name the classes in index order (``data/features/labels.json``).
    """
    if len(labels) != fit.num_classes:
        raise ValueError(f"{len(labels)} labels {labels} for a model of {fit.num_classes} classes")
    config = TokenizerConfig(**json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")))
    if config.max_len != fit.max_len:
        raise ValueError(
            f"{tokenizer_dir / 'tokenizer.json'}: max_len {config.max_len}, but the model was fitted on ids cut "
            f"to {fit.max_len}; fit it with max_len={config.max_len} (the tokenizer's) so both cut alike"
        )
    export_classic(fit, folder / MODEL_FILE)
    versions = library_versions() | library_versions(("scikit-learn",))  # the fit's library, too
    Manifest(list(labels), classic_config(fit), variant, metrics, versions).save(folder)
    copy_tokenizer(tokenizer_dir, folder)
    return folder


def _int8_weight(weight: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """Asymmetric per-tensor uint8 weights: ``weight ≈ scale · (quantized - zero_point)`` (0 exactly representable)."""
    low, high = min(float(weight.min()), 0.0), max(float(weight.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    quantized = np.clip(np.rint(weight / scale) + zero_point, 0, 255).astype(np.uint8)
    return quantized, np.float32(scale), np.uint8(zero_point)


def quantize_classic(fp32_folder: Path, out_folder: Path) -> Path:
    """The ``int8-static`` variant of a classic folder: its Gemm as an 8-bit integer product with *fixed* scales.

    The features are L2-normalised first (``x / |x|``, every element in [0, 1] by construction: tf-idf is never
    negative), so their int8 scale is a constant, 1/255, known without calibration; the weights are uint8 with
    one scale and zero point. ``MatMulInteger`` sums the 8-bit products exactly in int32, then one ``Mul``
    rescales: ``(x / |x|) W ≈ s_x s_w Σ x_q (w_q - z_w)``. The graph until the TF-IDF and after the scores is
    the fp32 one's.

    Why not dynamic quantization (ORT's ``quantize_dynamic``): it picks the features' scale from the largest
    value *in the batch*, so a text's scores, and now and then its label, depended on the texts batched with
    it (14 of 200,000 labels differed between one process and a Dask cluster, BENCHMARKS.md). A fixed scale
    makes every row's answer its own: the same bits in any batch. Why not ORT's static QDQ: its QGemm rounds
    the (B, K) scores to 8 bits a second time. uint8 weights (u8u8) also keep clear of the u8s8 kernels'
    16-bit saturation on AVX2.
    """
    model = onnx.load(fp32_folder / MODEL_FILE)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    (gemm,) = [n for n in graph.node if n.op_type == "Gemm"]
    (div,) = [n for n in graph.node if n.op_type == "Div" and n.input[0] == gemm.output[0]]
    features, weight_name = gemm.input[0], gemm.input[1]
    weight_q, weight_scale, weight_zp = _int8_weight(numpy_helper.to_array(inits[weight_name]))
    feature_scale = np.float32(1 / 255)
    new_inits = [
        _const("feature_scale", np.array(feature_scale, np.float32)),
        _const("feature_zero_point", np.array(0, np.uint8)),
        _const("weight_q", weight_q),
        _const("weight_zero_point", np.array(weight_zp, np.uint8)),
        _const("product_scale", np.array(feature_scale * weight_scale, np.float32)),
    ]
    norm = div.input[1]
    new_nodes = [
        helper.make_node("Div", [features, norm], ["unit_features"]),  # (B, F), each in [0, 1]
        helper.make_node(
            "QuantizeLinear", ["unit_features", "feature_scale", "feature_zero_point"], ["features_q"]
        ),
        helper.make_node(
            "MatMulInteger",
            ["features_q", "weight_q", "feature_zero_point", "weight_zero_point"],
            ["products"],
        ),  # (B, K) int32, exact
        helper.make_node("Cast", ["products"], ["products_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["products_f", "product_scale"], [div.output[0]]),
    ]
    at = list(graph.node).index(gemm)
    nodes = [n for n in graph.node if n not in (gemm, div)]
    nodes[at:at] = new_nodes
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name != weight_name]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    onnx.checker.check_model(model, full_check=True)
    out_folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, out_folder / MODEL_FILE, save_as_external_data=False)
    manifest = Manifest.load(fp32_folder)
    Manifest(manifest.labels, manifest.config, INT8_VARIANT, versions=manifest.versions).save(out_folder)
    copy_tokenizer(fp32_folder, out_folder)
    return out_folder
