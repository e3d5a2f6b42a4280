"""What every graph file a bundle holds must satisfy: one import per used domain, checker-clean, loadable by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path


def opset_problems(path: Path) -> list[str]:
    """Every way `path`'s opset imports differ from "one per domain a node uses, the default domain once"."""
    import onnx

    from salad.merge import used_domains

    proto = onnx.load(str(path), load_external_data=False)
    domains = ["" if o.domain == "ai.onnx" else o.domain for o in proto.opset_import]
    problems = []
    duplicates = sorted({d for d in domains if domains.count(d) > 1})
    if duplicates:
        problems.append(f"{path.name}: domains imported more than once: {duplicates} in {domains}")
    if domains.count("") != 1:
        problems.append(f"{path.name}: the default domain is imported {domains.count('')} times, expected once")
    unused = sorted(set(domains) - used_domains(proto) - {""})
    if unused:
        problems.append(f"{path.name}: domains imported but used by no node: {unused}")
    missing = sorted(used_domains(proto) - set(domains))
    if missing:
        problems.append(f"{path.name}: domains used but not imported: {missing}")
    return problems


def assert_graphs_clean(bundle: Path) -> list[str]:
    """Check every *.onnx of `bundle` (opsets, onnx.checker in full, an ONNX Runtime session); returns their names."""
    import onnx
    import onnxruntime as ort

    files = sorted(bundle.glob("*.onnx"))
    assert files, f"no graphs in {bundle}"
    problems = [p for f in files for p in opset_problems(f)]
    assert not problems, "\n".join(problems)
    for f in files:
        onnx.checker.check_model(str(f), full_check=True)  # by path: external bank data resolves beside the file
        ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    return [f.name for f in files]
