"""The vllm_server fleet against fake servers (tests/fake_vllm_server.py, HTTP in threads): balancing, failover of a
failing or hung server, refused weight versions, nothing listening, every server gone, and the answer parser."""

from __future__ import annotations

import pytest

from rlkit.rollout import SamplingParams
from rlkit.rollout import RolloutWorkerError
from rlkit.rollout.fleet import ServerFleet
from rlkit.rollout.http_client import ServerClient, ServerError, to_generated
from tests.fake_vllm_server import FakeServer, fake_tokens, free_port

PARAMS = SamplingParams(max_new_tokens=5)
PROMPTS = [[i, i + 1, 7] for i in range(40)]
SEEDS = list(range(100, 140))


def _accept_version(want: str):
    return lambda g: None if {s.version for s in g.spans} == {want} else f"wrong version {g.spans}"


@pytest.fixture
def fakes():
    made: list[FakeServer] = []

    def make(**kw) -> FakeServer:
        made.append(FakeServer(**kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _fleet(servers, **kw) -> ServerFleet:
    fleet = ServerFleet([s.address for s in servers], reconnect_every_s=0.0, **kw)
    fleet.connect_all(5)
    for s in fleet.servers:
        s.holds = "v"
    return fleet


def _check(results) -> None:
    assert [r.completion.token_ids for r in results] == [fake_tokens(p, s, 5) for p, s in zip(PROMPTS, SEEDS)]


def test_requests_are_balanced_and_results_are_in_order(fakes):
    a, b = fakes(), fakes()
    fleet = _fleet([a, b], max_inflight=4)
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert a.served + b.served == 40 and a.served >= 8 and b.served >= 8     # both took a real share
    fleet.close()


def test_a_failing_server_is_dropped_and_its_requests_served_elsewhere(fakes):
    good, bad = fakes(), fakes(mode="error")
    fleet = _fleet([bad, good], max_inflight=4)
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert not fleet.servers[0].alive and "answered 500" in fleet.servers[0].error
    assert fleet.requeued >= 1 and good.served == 40
    fleet.close()


def test_a_hung_server_is_dropped_after_the_health_timeout(fakes):
    good, hung = fakes(), fakes()
    fleet = _fleet([hung, good], max_inflight=4, health_every_s=0.5, health_timeout_s=0.5)
    hung.mode = "hang"                          # from now on: accepts connections, never answers
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert not fleet.servers[0].alive and "hung" in fleet.servers[0].error
    assert fleet.requeued == 4                  # its four in-flight requests went to the other server
    hung.release.set()
    fleet.close()


def test_completions_of_another_weight_version_are_refused_and_resent(fakes):
    stale, current = fakes(version="old"), fakes()
    fleet = _fleet([stale, current], max_inflight=2)
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert not fleet.servers[0].alive and "wrong version" in fleet.servers[0].error
    assert stale.served >= 1 and current.served == 40
    fleet.close()


def test_servers_not_holding_the_version_get_no_requests(fakes):
    a, b = fakes(), fakes()
    fleet = _fleet([a, b])
    fleet.servers[0].holds = None               # e.g. a restarted server before its first sync
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert a.served == 0 and b.served == 40
    fleet.close()


def test_every_server_gone_names_each_address(fakes):
    a, b = fakes(mode="error"), fakes(mode="error")
    fleet = _fleet([a, b])
    with pytest.raises(RolloutWorkerError, match=rf"every rollout server is gone: {a.address} \(.*500.*\); "
                                                 rf"{b.address} \(.*500.*\).*resumes from the last checkpoint"):
        fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v"))
    fleet.close()


def test_nothing_listening_names_the_address_and_the_fix():
    port = free_port()
    fleet = ServerFleet([f"127.0.0.1:{port}"], health_timeout_s=0.5)
    with pytest.raises(RolloutWorkerError, match=rf"no rollout server reachable after 1 s: 127.0.0.1:{port} "
                                                 r"\(not answering /health.*rlkit rollout-server"):
        fleet.connect_all(1)
    fleet.close()


def test_a_dropped_server_is_revived_when_it_answers_again(fakes):
    a = fakes()
    fleet = _fleet([a])
    fleet.drop(fleet.servers[0], "test")
    assert fleet.revive() == [fleet.servers[0]] and fleet.servers[0].alive and fleet.servers[0].holds is None
    fleet.close()


def test_answer_parser_refuses_aborted_and_logprob_less_answers():
    ok = {"choices": [{"token_ids": [5, 6], "finish_reason": "stop",
                       "logprobs": {"content": [{"logprob": -0.5}, {"logprob": -1.5}]},
                       "weight_versions": [{"version": "r:1", "start": 0, "end": 1},
                                           {"version": "r:2", "start": 1, "end": 2}]}]}
    got = to_generated("h:1", ok)
    assert got.completion.token_ids == [5, 6] and got.completion.logprobs == [-0.5, -1.5]
    assert got.completion.finish_reason == "stop" and [s.version for s in got.spans] == ["r:1", "r:2"]
    aborted = {"choices": [dict(ok["choices"][0], finish_reason="abort")]}
    with pytest.raises(ServerError, match="h:1: the request was aborted"):
        to_generated("h:1", aborted)
    bare = {"choices": [dict(ok["choices"][0], logprobs=None)]}
    with pytest.raises(ServerError, match="2 tokens but 0 log-probs"):
        to_generated("h:1", bare)
    with pytest.raises(ServerError, match="malformed generate answer"):
        to_generated("h:1", {"choices": []})


def test_non_loopback_servers_need_allow_remote(tiny_model_dir):
    from rlkit.rollout.http_client import check_addresses
    assert check_addresses("127.0.0.1:8000, localhost:8001", False) == ["127.0.0.1:8000", "localhost:8001"]
    with pytest.raises(ValueError, match=r"\['10.0.0.5:8000'\] are not loopback.*no authentication.*allow_remote=true"):
        check_addresses(["127.0.0.1:8000", "10.0.0.5:8000"], False)
    assert check_addresses(["10.0.0.5:8000"], True) == ["10.0.0.5:8000"]
    with pytest.raises(ValueError, match="addresses is empty"):
        check_addresses("", False)


def test_a_router_is_asked_again_not_dropped_when_a_server_behind_it_lags(fakes):
    router = fakes(stale_answers=3)
    fleet = ServerFleet([router.address], max_inflight=1, router=True)
    fleet.connect_all(5)
    fleet.servers[0].holds = "v"
    _check(fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v")))
    assert fleet.servers[0].alive and fleet.requeued == 3 and router.served == 43
    always_stale = fakes(stale_answers=10**6)
    fleet = ServerFleet([always_stale.address], router=True)
    fleet.connect_all(5)
    fleet.servers[0].holds = "v"
    with pytest.raises(RolloutWorkerError, match=rf"router {always_stale.address} keeps answering.*list every server"):
        fleet.generate(PROMPTS, SEEDS, PARAMS, lambda: "v", _accept_version("v"))
    fleet.close()


def test_a_kept_alive_connection_closed_by_the_server_is_retried_on_a_new_one(fakes):
    """CI saw `pause failed: cannot connect (connection reset)` on a live server: the client reused a connection
    the server had closed while idle. Such a request goes once more on a new connection; a real refusal does not."""
    fake = fakes(mode="drop_reused")
    client = ServerClient(fake.address)
    assert client.call("GET", "/health") == {} and fake.dropped == 0
    for dropped in (1, 2, 3):                       # each connection's 2nd request: dropped, resent, answered
        assert client.call("GET", "/health") == {} and fake.dropped == dropped
    with pytest.raises(ServerError, match="cannot connect"):
        ServerClient(f"127.0.0.1:{free_port()}").call("GET", "/health")
