"""GPU facts: the nvidia-smi parser (fm9g_deploy/gpu.py) and the Ansible module that uses it.

The H100 files are real nvidia-smi output. Where a test runs "nvidia-smi" it runs
tests/fixtures/nvidia-smi/nvidia-smi-double.sh, a labelled test double that replays those files
(the test machine has no GPU).
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from fm9g_deploy import gpu
from fm9g_deploy.gpu import (
    HostGpuFacts,
    cuda_support_problem,
    gather_gpu_facts,
    parse_cuda_version,
    parse_driver_version,
    parse_query_gpu,
    run_locally,
    version_tuple,
)

from tests.unit.ansible_module import run_library_module
from tests.unit.nvidia_smi_fixtures import (
    SMI_FIXTURES,
    double_runner,
    facts_from_double,
    recorded_fields,
    recorded_gpus,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
H100 = SMI_FIXTURES / "h100-80gb"
OLD_DRIVER_DOUBLE = SMI_FIXTURES / "old-driver-cuda118-double"
#: Test doubles (hand-written, see each folder's README.md).
MIG = SMI_FIXTURES / "mig-enabled-double"
MIXED = SMI_FIXTURES / "mixed-models-double"
MISSING = SMI_FIXTURES / "missing-values-double"
DUPLICATE = SMI_FIXTURES / "duplicate-index-double"
DOUBLES = [OLD_DRIVER_DOUBLE, MIG, MIXED, MISSING, DUPLICATE]


def nvidia_smi_double(tmp_path: Path, replay: Path, monkeypatch) -> Path:
    """An executable named nvidia-smi that runs the test double, replaying ``replay``."""
    folder = tmp_path / "double-bin"
    folder.mkdir(exist_ok=True)
    program = folder / "nvidia-smi"
    program.write_text(f'#!/bin/sh\nexec sh "{SMI_FIXTURES / "nvidia-smi-double.sh"}" "$@"\n')
    program.chmod(0o755)
    monkeypatch.setenv("FM9G_NVIDIA_SMI_DOUBLE_DIR", str(replay))
    return program


# -- parser, against the real H100 output ------------------------------------------------------

def test_query_gpu_of_a_real_h100():
    [h100] = recorded_gpus(H100)
    assert h100.index == 0
    assert h100.uuid == "GPU-78a118e3-41b4-3aad-d482-6ab54f165208"
    assert h100.name == "NVIDIA H100 80GB HBM3"
    assert (h100.memory_total_mib, h100.memory_used_mib, h100.memory_free_mib) == (81559, 0, 81079)
    assert h100.driver_version == "580.159.04"
    assert h100.pci_bus_id == "00000000:00:06.0"
    assert h100.compute_capability == "9.0"


@pytest.mark.parametrize("name", ["nvidia-smi-version.txt", "nvidia-smi.txt", "nvidia-smi-q.txt"])
def test_cuda_version_from_every_real_output(name):
    text = (H100 / name).read_text()
    assert parse_cuda_version(text) == "13.0"
    assert parse_driver_version(text) == "580.159.04"


def test_several_gpus_sorted_and_missing_values_are_none():
    text = (
        "1, GPU-b, NVIDIA A100-SXM4-80GB, 81920, [N/A], [N/A], 535.104.05, 00000000:10:00.0, [Not Supported], [N/A]\n"
        "\n"
        "0, GPU-a, NVIDIA A100-SXM4-80GB, 81920, 512, 81408, 535.104.05, 00000000:07:00.0, 8.0, Disabled\n"
    )
    first, second = parse_query_gpu(text)
    assert (first.index, first.uuid, first.memory_used_mib, first.mig_mode, first.unreported) == (0, "GPU-a", 512, "Disabled", {})
    assert (second.index, second.memory_used_mib, second.memory_free_mib, second.compute_capability) == (1, None, None, None)
    assert second.unreported == {"memory.used": "[N/A]", "memory.free": "[N/A]", "compute_cap": "[Not Supported]",
                                 "mig.mode.current": "[N/A]"}


def test_output_with_other_columns_is_refused():
    # The saved header form asks for other columns: the parser must not misread it.
    with pytest.raises(ValueError, match="has 4 columns, expected 10"):
        parse_query_gpu((H100 / "query-gpu-header.csv").read_text())


def test_memory_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError, match="memory.total"):
        parse_query_gpu("0, GPU-a, X, lots, 0, 0, 1, 00000000:07:00.0, 8.0, Disabled\n")


def test_no_cuda_version_in_text():
    assert parse_cuda_version("No devices were found") is None


def test_one_gpus_missing_values_keep_it_and_the_host():
    """[N/A], [Not Supported], [Unknown Error] in a field: that field is None, the GPU stays."""
    gpus = recorded_gpus(MISSING)
    assert [gpu.index for gpu in gpus] == [0, 1, 2, 3]
    assert (gpus[1].memory_total_mib, gpus[1].memory_used_mib, gpus[1].memory_free_mib) == (81559, None, None)
    assert gpus[2].memory_total_mib is None and gpus[2].unreported == {
        "memory.total": "[Unknown Error]", "memory.used": "[N/A]", "memory.free": "[N/A]"}
    assert (gpus[3].compute_capability, gpus[3].mig_mode) == (None, None)
    assert gpus[3].unreported == {"compute_cap": "[Not Supported]", "mig.mode.current": "[N/A]"}
    assert gpus[0].unreported == {} and gpus[0].mig_mode == "Disabled"


def test_name_and_uuid_may_be_missing_but_the_index_may_not():
    [gpu] = parse_query_gpu("0, [N/A], [Unknown Error], 81920, 0, 81920, [N/A], [N/A], [N/A], [N/A]\n")
    assert (gpu.uuid, gpu.name, gpu.memory_total_mib) == (None, None, 81920)
    with pytest.raises(ValueError, match="line 1 of nvidia-smi output: index '\\[N/A\\]' is not a number"):
        parse_query_gpu("[N/A], GPU-a, X, 81920, 0, 81920, 1, 00000000:07:00.0, 8.0, Disabled\n")


def test_mig_mode_is_read():
    gpus = recorded_gpus(MIG)
    assert [(gpu.index, gpu.mig_mode, gpu.mig_enabled) for gpu in gpus] == [(0, "Enabled", True), (1, "Disabled", False)]


def test_mixed_models_keep_each_name():
    assert [gpu.name for gpu in recorded_gpus(MIXED)] == ["NVIDIA H100 80GB HBM3"] * 2 + ["NVIDIA A100-SXM4-40GB"] * 2


def test_a_duplicate_index_is_malformed_output():
    with pytest.raises(ValueError, match=r"malformed: GPU index 0 is listed twice \(lines 1 and 2\)"):
        recorded_gpus(DUPLICATE)


def test_a_duplicate_uuid_is_malformed_output():
    line = "{}, GPU-same, NVIDIA H100 80GB HBM3, 81559, 0, 81079, 580.159.04, 00000000:00:0{}.0, 9.0, Disabled\n"
    with pytest.raises(ValueError, match="GPU uuid GPU-same is listed twice"):
        parse_query_gpu(line.format(0, 6) + line.format(1, 7))


def test_missing_uuids_are_not_duplicates():
    line = "{}, [N/A], NVIDIA H100 80GB HBM3, 81559, 0, 81079, 580.159.04, 00000000:00:0{}.0, 9.0, Disabled\n"
    assert len(parse_query_gpu(line.format(0, 6) + line.format(1, 7))) == 2


# -- the query and the double that answers it ------------------------------------------------------

def test_the_query_asks_for_every_field_the_parser_reads():
    assert "mig.mode.current" in gpu.QUERY_FIELDS
    assert gpu.QUERY_GPU_ARGS == ["--query-gpu=" + ",".join(gpu.QUERY_FIELDS), "--format=csv,noheader,nounits"]
    assert set(gpu.BASE_FIELDS) | set(gpu.NEWER_FIELDS) == set(gpu.QUERY_FIELDS)


@pytest.mark.parametrize("folder", DOUBLES, ids=lambda folder: folder.name)
def test_hand_written_doubles_record_every_field_queried(folder):
    """A double that lacks a column the module asks for would hide that column from the tests."""
    if (folder / "query-gpu.fields").exists():
        assert recorded_fields(folder) == gpu.QUERY_FIELDS


@pytest.mark.parametrize("folder", [H100, MIG, MIXED, MISSING], ids=lambda folder: folder.name)
def test_the_double_answers_the_modules_query(folder):
    rc, out, _ = double_runner(folder)(["nvidia-smi"] + gpu.QUERY_GPU_ARGS)
    assert rc == 0
    rows = [line.split(", ") for line in out.splitlines()]
    assert rows and {len(row) for row in rows} == {len(gpu.QUERY_FIELDS)}
    if folder == H100:  # captured without the MIG column: answered as nvidia-smi answers no value
        assert [row[-1] for row in rows] == ["[N/A]"]
    else:
        assert parse_query_gpu(out) == recorded_gpus(folder)


def test_the_real_h100_through_the_double_has_no_mig_value():
    """The H100 capture predates the MIG column: the double answers [N/A], which means no MIG."""
    facts = facts_from_double(H100)
    assert facts.problem is None and facts.gpus[0].mig_mode is None and not facts.gpus[0].mig_enabled


def test_duplicate_index_through_the_double_is_a_problem_not_gpus():
    facts = facts_from_double(DUPLICATE)
    assert facts.gpu_count == 0
    assert facts.problem == "nvidia-smi output is malformed: GPU index 0 is listed twice (lines 1 and 2)"


def test_a_driver_without_the_newer_fields_is_asked_again_without_them():
    """Drivers before R450 (MIG) or R510 (compute_cap) reject those fields by name."""
    asked = []
    line = "0, GPU-a, Tesla V100-SXM2-16GB, 16160, 0, 16160, 440.33.01, 00000000:07:00.0\n"

    def old_driver(argv):
        asked.append(argv[1])
        if argv[1] == "--version":
            return 0, "DRIVER version      : 440.33.01\nCUDA Version        : 10.2\n", ""
        if "compute_cap" in argv[1]:
            return 2, 'Field "compute_cap" is not a valid field to query.\n', ""
        return 0, line, ""

    facts = gather_gpu_facts("nvidia-smi", old_driver)
    assert asked[:2] == [gpu.QUERY_GPU_ARGS[0], "--query-gpu=" + ",".join(gpu.BASE_FIELDS)]
    assert facts.problem is None and facts.cuda_driver_version == "10.2"
    [old] = facts.gpus
    assert (old.memory_total_mib, old.compute_capability, old.mig_mode, old.unreported) == (16160, None, None, {})


# -- the driver's CUDA version against a profile ---------------------------------------------------

def test_version_tuple_orders_numerically():
    assert version_tuple("12.10") > version_tuple("12.9") > version_tuple("12")
    with pytest.raises(ValueError):
        version_tuple("12.x")


def test_new_driver_supports_cuda_12_1():
    assert cuda_support_problem("13.0", "12.1") is None
    assert cuda_support_problem("12.1", "12.1") is None


def test_old_driver_double_fails_the_cuda121_check():
    """Uses the labelled old-driver test double (CUDA 11.8), read through the banner fallback."""
    driver_cuda = parse_cuda_version((OLD_DRIVER_DOUBLE / "nvidia-smi.txt").read_text())
    assert driver_cuda == "11.8"
    problem = cuda_support_problem(driver_cuda, "12.1")
    assert problem is not None
    assert "supports CUDA up to 11.8" in problem and "needs CUDA 12.1" in problem and "upgrade" in problem


def test_unknown_driver_cuda_is_a_problem_too():
    assert "did not report" in cuda_support_problem(None, "12.1")


# -- gathering: running nvidia-smi --------------------------------------------------------------------

def test_no_nvidia_smi_means_no_gpus_and_no_error():
    facts = gather_gpu_facts(None, run_locally)
    assert facts.gpu_count == 0 and facts.gpus == []
    assert facts.problem == "nvidia-smi not found"


def test_gather_from_the_h100_double(tmp_path, monkeypatch):
    program = nvidia_smi_double(tmp_path, H100, monkeypatch)
    facts = gather_gpu_facts(str(program), run_locally)
    assert facts.gpu_count == 1 and facts.gpus[0].memory_total_mib == 81559
    assert (facts.cuda_driver_version, facts.driver_version) == ("13.0", "580.159.04")
    assert facts.problem is None


def test_old_driver_without_version_option_falls_back_to_the_banner(tmp_path, monkeypatch):
    program = nvidia_smi_double(tmp_path, OLD_DRIVER_DOUBLE, monkeypatch)
    facts = gather_gpu_facts(str(program), run_locally)
    assert facts.cuda_driver_version == "11.8"
    assert facts.driver_version == "520.61.05"


def test_nvidia_smi_that_cannot_reach_the_driver(tmp_path, monkeypatch):
    empty = tmp_path / "no-driver"
    empty.mkdir()
    program = nvidia_smi_double(tmp_path, empty, monkeypatch)
    facts = gather_gpu_facts(str(program), run_locally)
    assert facts.gpu_count == 0
    assert facts.problem.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")


def test_facts_survive_json():
    facts = HostGpuFacts(gpus=recorded_gpus(MISSING), driver_version="580.159.04",
                         cuda_driver_version="13.0", nvidia_smi="/usr/bin/nvidia-smi")
    data = json.loads(json.dumps(facts.to_dict()))
    assert data["gpu_count"] == 4 and data["gpus"][2]["unreported"]["memory.total"] == "[Unknown Error]"
    assert HostGpuFacts.from_dict(data) == facts
    with pytest.raises(ValueError, match="malformed GPU entry"):
        HostGpuFacts.from_dict({"gpus": [{"index": 0}]})


# -- one parser for control node and hosts ----------------------------------------------------------

def test_gpu_module_is_stdlib_only():
    """gpu.py runs on managed hosts as module_utils: it may import nothing but the standard library."""
    tree = ast.parse(Path(gpu.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_module_utils_is_a_relative_link_to_the_parser():
    link = PROJECT_ROOT / "module_utils" / "fm9g_gpu.py"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == Path(gpu.__file__).resolve()
    config = (PROJECT_ROOT / "ansible.cfg").read_text()
    assert "module_utils = ./module_utils" in config


# -- the Ansible module, imported and run in-process ---------------------------------------------------

def run_module(args: dict, monkeypatch, capsys) -> dict:
    """Run library/fm9g_gpu_facts.py's main() with ``args`` and return its JSON result."""
    # Ansible ships module_utils/fm9g_gpu.py with the module; here the same file is fm9g_deploy.gpu.
    code, result = run_library_module("fm9g_gpu_facts", args, monkeypatch, capsys, module_utils={"fm9g_gpu": gpu})
    assert code == 0
    return result


def test_module_reports_the_h100(tmp_path, monkeypatch, capsys):
    program = nvidia_smi_double(tmp_path, H100, monkeypatch)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ['PATH']}")
    result = run_module({}, monkeypatch, capsys)
    facts = result["ansible_facts"]["fm9g_gpu"]
    assert result["changed"] is False and not result.get("failed")
    assert facts["gpu_count"] == 1 and facts["cuda_driver_version"] == "13.0"
    assert facts["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert facts["nvidia_smi"] == str(program)


def test_module_reports_mig_mode_and_missing_values(tmp_path, monkeypatch, capsys):
    program = nvidia_smi_double(tmp_path, MISSING, monkeypatch)
    facts = run_module({"nvidia_smi": str(program)}, monkeypatch, capsys)["ansible_facts"]["fm9g_gpu"]
    assert facts["gpu_count"] == 4 and facts["problem"] is None
    assert [g["mig_mode"] for g in facts["gpus"]] == ["Disabled", "Disabled", "Disabled", None]
    assert facts["gpus"][2]["memory_total_mib"] is None
    assert facts["gpus"][2]["unreported"]["memory.total"] == "[Unknown Error]"


def test_module_on_a_host_without_nvidia_smi(tmp_path, monkeypatch, capsys):
    result = run_module({"nvidia_smi": str(tmp_path / "absent" / "nvidia-smi")}, monkeypatch, capsys)
    facts = result["ansible_facts"]["fm9g_gpu"]
    assert not result.get("failed")
    assert facts["gpu_count"] == 0 and facts["nvidia_smi"] is None and facts["problem"] == "nvidia-smi not found"
