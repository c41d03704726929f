"""`lynx-sglang serve --dp-size 2 --lynx-policy lynx` on this CPU: each replica gets a core set of its
own (SGLang would assert one NUMA node per replica), both serve with the policy, and the /lynx/*
routes that need a scheduler answer 501 at once, saying why, instead of waiting on a channel no
replica reads."""

import json
import re
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import RunningServer, get_json, post

from lynx_sglang.cpu_runtime.threads import threads_bind, usable_cores
from lynx_sglang.embedded.task import heldout_problems, normalise_completion
from lynx_sglang.evaluate import complete

pytestmark = pytest.mark.slow

TOKEN = "dp-admin-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RunningServer(["--dp-size", "2", "--lynx-policy", "lynx", "--lynx-admin-token", TOKEN],
                        tmp_path_factory.mktemp("data-parallel") / "server.log", env={"SGLANG_CPU_OMP_THREADS_BIND": ""})
    srv.wait_healthy()
    yield srv
    srv.stop()


def test_both_replicas_serve_on_their_own_core_sets(server):
    problems = heldout_problems(32, seed=43, distinct=True)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda p: complete(server.url, p.prompt), problems))
    solved = sum(normalise_completion(a) == p.answer for a, p in zip(answers, problems))
    assert solved >= 24, f"{solved}/32"  # the embedded model solves about 95 %
    log = server.log_path.read_text()
    bound = dict(re.findall(r"init_threads_binding: numa_index=(\d), world_size=2, local_omp_cpuid=(\S+)", log))
    expected = threads_bind(2, usable_cores()).split("|")
    assert bound == {"0": expected[0], "1": expected[1]}, bound
    assert "--dp-size 2: every replica runs the policy it starts with" in log


@pytest.mark.parametrize("method, path", [("GET", "/lynx/stats"), ("GET", "/lynx/policy"), ("POST", "/lynx/policy")])
def test_routes_that_need_the_scheduler_say_why_at_once(server, method, path):
    started = time.monotonic()
    if method == "GET":
        with pytest.raises(urllib.error.HTTPError) as error:
            get_json(server.url + path)
        status, reply = error.value.code, json.loads(error.value.read())
    else:
        status, reply = post(server.url + path, {"policy": "baseline"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 501 and "--dp-size 2" in reply["error"], reply
    assert time.monotonic() - started < 5
    assert get_json(server.url + "/lynx/info")["version"]
