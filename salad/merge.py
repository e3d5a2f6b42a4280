"""How a bundle's end-to-end graph is made from its encoder and scorer graphs (docs/architecture.md §4).

One merge for export (fp32) and calibration (fp16/int8 variants), so every model*.onnx has the same
names and outputs, and one rule for a written graph's opset imports (`normalise_opsets`). onnx is
imported when a merge runs: the core itself does not need it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import salad
from salad.errors import BundleError
from salad.scoring import SCORE_NAMES

if TYPE_CHECKING:
    import onnx

MERGED_OUTPUTS = ("embedding", *SCORE_NAMES)


def merge_encoder_scorer(encoder: onnx.ModelProto, scorer: onnx.ModelProto) -> onnx.ModelProto:
    """model.onnx: image (+ bank) → embedding, score, knn_angle; internal names prefixed, I/O names kept."""
    from onnx import compose

    enc = compose.add_prefix(encoder, "encoder/", rename_inputs=False, rename_outputs=False)
    sco = compose.add_prefix(scorer, "scorer/", rename_inputs=False, rename_outputs=False)
    merged = compose.merge_models(
        enc, sco, io_map=[("embedding", "embedding")], outputs=list(MERGED_OUTPUTS),
        producer_name="salad-edge", producer_version=salad.__version__,
    )
    normalise_opsets(merged)
    return merged


#: How ONNX spells the default operator domain; both spellings name the same operator set.
DEFAULT_DOMAINS = ("", "ai.onnx")


def _nodes(nodes: Iterator[onnx.NodeProto] | list[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, and every node of the subgraphs (If/Loop/Scan bodies) their attributes hold."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            for graph in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _nodes(list(graph.node))


def used_domains(proto: onnx.ModelProto) -> set[str]:
    """The operator domains some node of the model uses (the default domain spelled ""), local functions included."""
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    return {"" if n.domain in DEFAULT_DOMAINS else n.domain for n in _nodes(nodes)}


def normalise_opsets(proto: onnx.ModelProto) -> onnx.ModelProto:
    """One opset import per domain a node uses, the default domain always, in place; returns `proto`.

    onnx.compose.merge_models lists the default domain once per merged model, and ONNX Runtime's
    quantizer imports every domain it knows; a reader should see only what the graph needs.
    Two imports of one domain at different versions are refused (BundleError): the graph is ambiguous.
    """
    versions: dict[str, int] = {}
    for entry in proto.opset_import:
        domain = "" if entry.domain in DEFAULT_DOMAINS else entry.domain
        if versions.setdefault(domain, entry.version) != entry.version:
            raise BundleError(
                f"the graph imports domain {domain or 'ai.onnx'!r} at versions {versions[domain]} and {entry.version}; "
                "expected one version per domain (re-export the bundle)"
            )
    if "" not in versions:
        raise BundleError("the graph imports no default (ai.onnx) opset; expected one (re-export the bundle)")
    keep = used_domains(proto) | {""}
    missing = sorted(keep - versions.keys())
    if missing:
        raise BundleError(f"nodes use domains {missing} that the graph does not import; expected an opset import for each")
    order = list(versions)  # first-seen order, default domain first
    order.remove("")
    del proto.opset_import[:]
    for domain in ["", *order]:
        if domain in keep:
            entry = proto.opset_import.add()
            entry.domain, entry.version = domain, versions[domain]
    return proto
