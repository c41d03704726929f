"""scripts/gpu-serve.sh's stage list: the names it accepts are gpu_stages.py's, and a misspelt one is
refused before anything is installed (a GPU machine's minutes are few). The stages themselves need the
kit and are rehearsed on a CPU as docs/gpu.md says."""

import re
import subprocess

from test_offload_gpu_report import REPO, load

SCRIPT = REPO / "scripts" / "gpu-serve.sh"


def run_script(tmp_path, *args):
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "KIT": str(tmp_path / "no-kit")}, timeout=60)  # fmt: skip


def test_the_script_knows_exactly_the_stages_of_gpu_stages():
    known = re.search(r'^known_stages="([^"]*)"', SCRIPT.read_text(), re.M).group(1).split()
    assert known == list(load("gpu_stages").STAGES)


def test_a_misspelt_stage_in_a_list_is_refused_before_the_install(tmp_path):
    result = run_script(tmp_path, "smoke,mixtrl")
    assert result.returncode == 2
    assert result.stdout.strip() == ("unknown stage 'mixtrl'; stages: smoke, mixtral, qwen3, routers, compute, "
                                     "correctness, offload, reference (several: STAGE,STAGE)")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_an_empty_list_is_refused_and_known_stages_reach_the_kit_check(tmp_path):
    assert run_script(tmp_path, ",").stdout.startswith("no stage given; stages: smoke, mixtral")
    result = run_script(tmp_path, "smoke,mixtral")
    assert result.returncode == 2 and result.stdout.startswith(f"no kit at {tmp_path / 'no-kit'}")
