"""The bundle's graph contract, declared once (optimum-style): names, files, dynamic axes, opset range.

Export builds its graphs to this spec and validation checks every written file against it, so the
runtime engineer's code and the exporter cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from salad.bundle import (  # noqa: F401 - the bundle's file and input names, re-exported for export's modules
    BANK_DATA_FILE,
    BANK_FILE,
    BANK_INPUT,
    CHECKPOINT_FILE,
    ENCODER_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    SCORER_FILE,
)
from salad.errors import ConfigError
from salad.manifest import TensorSpec
from salad.scoring import SCORE_NAMES

#: Name of the one dynamic axis in every graph (TensorSpec shapes use this string).
BATCH = "batch"
#: ONNX opsets the exporter writes: ≥ 17 (docs/architecture.md §5), ≤ what torch's TorchScript exporter emits.
MIN_OPSET = 17
MAX_OPSET = 20
#: Protobuf cannot serialise a message of 2 GiB or more; banks that would push a file past it go external.
PROTOBUF_LIMIT = 2**31 - 1

#: Name of the transposed bank initializer [D, N] (the bank as an input [N, D] is salad.bundle.BANK_INPUT).
BANK_INITIALIZER = "bank_t"

#: The batch sizes validation re-runs the reference images at, besides all of them in one batch.
VALIDATION_BATCH_SIZES = (1, 3, 16)


@dataclass(frozen=True)
class GraphContract:
    """One graph of the bundle: manifest key, file name, and its inputs and outputs."""

    key: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def graph_contracts(size: int, dim: int, bank_rows: int, bank_as_input: bool) -> dict[str, GraphContract]:
    """The three fp32 graphs of a bundle with input size S, embedding dim D and N bank rows."""
    image = TensorSpec("image", "float32", [BATCH, 1, size, size])
    embedding = TensorSpec("embedding", "float32", [BATCH, dim])
    scores = tuple(TensorSpec(name, "float32", [BATCH]) for name in SCORE_NAMES)  # salad.scoring.SCORES
    bank = (TensorSpec(BANK_INPUT, "float32", [bank_rows, dim]),) if bank_as_input else ()
    return {
        "encoder": GraphContract("encoder", ENCODER_FILE, (image,), (embedding,)),
        "scorer": GraphContract("scorer", SCORER_FILE, (embedding, *bank), scores),
        "model": GraphContract("model", MODEL_FILE, (image, *bank), (embedding, *scores)),
    }


def check_opset(opset: int) -> None:
    """Refuse opsets the design (≥ 17) or torch's exporter (≤ 20) does not allow, naming the range."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"--opset {opset}: expected {MIN_OPSET}..{MAX_OPSET} (docs/architecture.md §5 needs ≥ {MIN_OPSET}; torch's "
            f"TorchScript exporter writes at most {MAX_OPSET}). Use --opset {MIN_OPSET}."
        )
