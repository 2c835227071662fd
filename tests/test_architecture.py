"""The shape of the code: import contracts, no import cycles, module-level imports, the method registry as the
one bridge between the library and the applications, and the private torch APIs behind netvis._compat."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import time
import typing
from pathlib import Path

import grimp
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from netvis import _checks, _compat, devices
from netvis.app.cli import main
from netvis.app.jobs._inputs import load_target
from netvis.app.serve import Viewer
from netvis.models.batchnorm import BatchNorm2d
from netvis.saliency import METHODS, gradient
from netvis.saliency import methods as registry
from netvis.saliency.methods import Method, Option
from netvis.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "netvis"

LOCAL_IMPORTS_ALLOWED = {"torchvision", "torchvision.datasets"}
"""Modules a function may import locally: optional at runtime and about a second to import."""


# --------------------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------------------


def test_import_contracts_hold():
    """lint-imports with the contracts of pyproject.toml: the library never imports netvis.app, layers, no cycles."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iteratively: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_netvis_modules():
    """Over every module of netvis, function-local imports included (grimp reads them too)."""
    g = grimp.build_graph("netvis", include_external_packages=False)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _strongly_connected(graph) == []


def _local_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return found


def test_imports_are_at_module_level_except_optional_heavy_modules():
    offending = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted(SRC.rglob("*.py")) for line, name in _local_imports(path)
                 if name not in LOCAL_IMPORTS_ALLOWED]
    assert offending == []


def test_import_netvis_does_not_import_torch():
    code = "import sys, netvis; assert 'torch' not in sys.modules, 'torch'; print(netvis.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_py_typed_ships():
    assert (SRC / "py.typed").is_file()


# --------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------


def _tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)).eval()
    return model, torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _keyword_parameters(function) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("method", registry.methods(), ids=lambda m: m.name)
def test_declared_options_are_the_functions_keywords_with_its_defaults(method: Method):
    keywords = _keyword_parameters(method.function)
    declared = {o.name: o for o in method.all_options}
    if method.batch_size == "chunked":
        declared.pop("batch_size")
    if method.precisions == ("fp32",):
        declared.pop("precision")
    assert set(declared) == set(keywords)
    for name, option in declared.items():
        assert option.default == keywords[name].default, name
        option.check(option.default, method.name)  # every default passes its own check


@pytest.mark.parametrize("method", registry.methods(), ids=lambda m: m.name)
def test_typed_options_list_every_option(method: Method):
    assert set(typing.get_type_hints(method.typed)) == set(method.option_names())


@pytest.mark.parametrize("method", registry.methods(), ids=lambda m: m.name)
def test_every_method_takes_batch_size_and_precision(method: Method):
    model, x = _tiny()
    target = [0, 1, 2, 3, 4]
    options = {**method.figure_options, **method.select({"window": 4, "stride": 4, "n_samples": 3, "steps": 4,
                                                          "generator": 0})}
    whole = method(model, x, target, **options)
    split = method(model, x, target, batch_size=2, **options)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert tuple(method.display(whole).shape) == (5, 12, 12)
    if "bf16" in method.precisions:
        low = method(model, x, target, precision="bf16", **options)
        assert low.shape == whole.shape and low.dtype == whole.dtype
    else:
        with pytest.raises(ValueError, match=rf"{method.name} supports precision 'fp32' only"):
            method(model, x, target, precision="bf16", **options)


def test_bad_options_are_named():
    model, x = _tiny()
    occlusion = registry.get("occlusion")
    with pytest.raises(ValueError, match=r"occlusion: option 'window' must be an int >= 1 or a pair of them, got 0"):
        occlusion(model, x, window=0)
    with pytest.raises(ValueError, match=r"occlusion has no option 'windw'"):
        occlusion(model, x, windw=4)
    with pytest.raises(ValueError, match=r"gradient: option 'reduce' must be one of 'max', 'sum' or None"):
        registry.get("gradient")(model, x, reduce="mean")
    with pytest.raises(ValueError, match=r"batch_size' must be an int >= 1"):
        registry.get("grad-cam")(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"unknown saliency method 'lime'; choose from occlusion, gradient"):
        registry.get("lime")


def test_output_kinds_follow_the_options():
    model, x = _tiny()
    occlusion = registry.get("occlusion")
    assert occlusion.output_kind() == "score-grid"
    assert occlusion.output_kind({"upsample": True}) == "per-pixel"
    assert occlusion(model, x, window=4, stride=4).shape == (5, 3, 3)
    assert registry.get("gradient").output_kind({"reduce": "max"}) == "per-pixel"
    assert registry.get("grad-cam").output_kind() == "per-pixel"
    assert registry.get("guided-grad-cam").output_kind() == "per-channel"


def test_display_reduces_channels_by_the_largest_magnitude():
    maps = torch.tensor([[[[1.0, -3.0]], [[-2.0, 2.0]]]])  # (1, 2, 1, 2)
    assert torch.equal(registry.get("gradient").display(maps), torch.tensor([[[2.0, 3.0]]]))
    grid = torch.tensor([[[-1.0, float("nan")]]])
    assert torch.equal(registry.get("occlusion").display(grid).isnan(), grid.isnan())


def test_a_method_that_breaks_its_declared_shape_is_caught():
    model, x = _tiny()
    wrong = Method(name="wrong-shape", function=lambda model, x, target=None: x[:, 0], output="per-channel")
    with registry.registered(wrong), pytest.raises(RuntimeError, match="declares per-channel maps"):
        registry.get("wrong-shape")(model, x)


def test_register_refuses_a_taken_name_and_a_conflicting_option():
    same = Method(name="gradient", function=gradient, output="per-channel")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(same)
    clash = Method(name="clash", function=lambda model, x, target=None, *, window="big": x, output="per-channel",
                   options=(Option("window", str, "big", "a word"),))
    with pytest.raises(ValueError, match="option 'window' of 'clash' differs from 'occlusion'"):
        registry.register(clash)
    assert "clash" not in registry.names()


def test_methods_view_follows_the_registry_and_can_be_patched_back():
    original = METHODS["deconvnet"]
    METHODS["deconvnet"] = gradient
    try:
        assert registry.get("deconvnet").function is gradient
        assert registry.get("deconvnet").precisions == ("fp32", "bf16")  # the rest of the entry stays
    finally:
        METHODS["deconvnet"] = original
    assert registry.get("deconvnet").function is original
    assert list(METHODS) == registry.names()


def _toy_saliency(model, x, target=None, *, scale=1.0):
    """|x| summed over the channels, times ``scale``: a per-pixel map that needs no model."""
    return scale * x.abs().sum(dim=1)


TOY = Method(name="toy-abs", function=_toy_saliency, output="per-pixel", title="toy",
             options=(Option("scale", float, 1.0, "a factor", minimum=0),))


def test_a_toy_method_is_one_registry_entry_and_reaches_the_cli_and_the_viewer(tmp_path):
    before = registry.names()
    with registry.registered(TOY):
        command = main.get_command(None, "saliency")
        choices = next(p for p in command.params if p.name == "methods").type.choices
        assert "toy-abs" in choices
        assert "--scale" in CliRunner().invoke(main, ["saliency", "--help"]).output

        out = tmp_path / "out"
        result = CliRunner().invoke(main, ["saliency", "fashion-mnist-small", "sample:2", "--method", "toy-abs",
                                           "--scale", "2.5", "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        x = load_target("sample:2", load_checkpoint("fashion-mnist-small").preprocess)
        np.testing.assert_allclose(np.load(out / "sample_2_toy-abs.npy"), 2.5 * x[0].abs().sum(dim=0).numpy(),
                                   rtol=1e-6)
        assert json.loads((out / "saliency.json").read_text())["images"][0]["methods"] == ["toy-abs"]

        viewer = Viewer("fashion-mnist-small", data="fashion-mnist-sample", limit=4, cache=tmp_path / "cache",
                        workers=1)
        try:
            assert viewer.info()["methods"] == [*before, "toy-abs"]
            job = viewer.submit({"kind": "saliency", "image": "sample:1", "methods": ["toy-abs"]})
            for _ in range(600):  # the job runs on the viewer's worker thread
                snapshot = viewer.job(job.id)
                if snapshot["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            assert snapshot["status"] == "done", snapshot
            (shown,) = snapshot["result"]["maps"]
            assert shown["method"] == "toy-abs" and "error" not in shown
        finally:
            viewer.close()
    assert registry.names() == before
    choices = next(p for p in main.get_command(None, "saliency").params if p.name == "methods").type.choices
    assert "toy-abs" not in choices


def test_registered_restores_the_registry_when_the_block_raises():
    before = registry.names()
    with pytest.raises(KeyError), registry.registered(TOY):
        registry.unregister("gradient")
        raise KeyError("inside")
    assert registry.names() == before


# --------------------------------------------------------------------------------------------------
# helpers with one home
# --------------------------------------------------------------------------------------------------


def test_private_torch_apis_are_where_compat_expects_them():
    module = nn.Linear(2, 2)
    for name in _compat.MODULE_HOOK_DICTS:
        assert isinstance(_compat.module_hook_dict(module, name), dict), name
    for name in _compat.GLOBAL_HOOK_DICTS:
        assert isinstance(_compat.global_hook_dict(name), dict), name
    handle = module.register_forward_hook(lambda *args: None)
    assert _compat.has_forward_hooks(module) and not _compat.has_global_forward_hooks()
    handle.remove()
    assert not _compat.has_forward_hooks(module)
    assert _compat.module_buffers(nn.BatchNorm2d(3))["running_mean"] is not None
    weight = nn.Parameter(torch.ones(2))
    weight.register_hook(lambda g: g)
    assert len(_compat.tensor_hook_keys(weight)[0]) == 1
    assert issubclass(nn.BatchNorm2d, _compat.BatchNormBase) and issubclass(nn.SyncBatchNorm, _compat.BatchNormBase)
    assert callable(_compat.nn_functions().elu)

    class Mode(torch.overrides.TorchFunctionMode):
        pass

    class Dispatch(_compat.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    depth, dispatch = _compat.torch_function_mode_depth(), _compat.dispatch_mode_depth()
    with Mode():
        assert _compat.torch_function_mode_depth() == depth + 1
    with Dispatch():
        assert _compat.dispatch_mode_depth() == dispatch + 1


def test_batchnorm_state_dict_override_has_torchs_signature():
    ours = inspect.signature(BatchNorm2d._load_from_state_dict)
    theirs = inspect.signature(nn.Module._load_from_state_dict)
    assert list(ours.parameters) == list(theirs.parameters)


def test_device_resolution():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert devices.resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            devices.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        devices.resolve_device("gpu0")
    with pytest.raises(TypeError, match="device must be"):
        devices.resolve_device(3)
    model = nn.Linear(2, 2)
    assert devices.device_for(model) == torch.device("cpu") == devices.model_device(nn.ReLU())
    assert devices.device_for(model, "cpu") == torch.device("cpu")


def test_argument_checks():
    assert _checks.check_pair(3, "window") == (3, 3)
    assert _checks.check_pair((2, np.int64(5)), "window") == (2, 5)
    with pytest.raises(TypeError, match="window must be an int or a pair of ints"):
        _checks.check_pair((1, 2, 3), "window")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        _checks.check_pair((1, 0), "stride")
    assert _checks.check_positive_int(np.int32(4), "k") == 4
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match="k must be a positive int"):
            _checks.check_positive_int(bad, "k")
    assert _checks.check_fraction(1, "p") == 1.0
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        _checks.check_fraction(0, "p")
