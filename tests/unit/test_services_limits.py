"""The services' per-peer limits: a quota per peer and for all, given back when done; a
peer's log lines rate-limited."""

import logging

import pytest

from pilotif.services.limits import LOG_BURST_LINES, LOG_LINES_PER_MIN, PeerLog, Quota


def test_a_quota_caps_each_peer_and_all_peers_together() -> None:
    quota = Quota(per_peer=3, total=5)
    assert quota.take("alpha", 2) and not quota.take("alpha", 2)
    assert quota.take("beta", 3) and not quota.take("gamma")
    assert (quota.held("alpha"), quota.held_by_all()) == (2, 5)
    quota.give_back("beta", 3)
    assert quota.take("gamma") and quota.held_by_all() == 3
    quota.give_back("alpha", 9)
    assert (quota.held("alpha"), quota.held_by_all()) == (0, 1)


def test_a_peers_log_lines_are_rate_limited_and_say_what_was_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = PeerLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pilotif"):
        logged = [log.warn("service_refused", "alpha", code="bad_request") for _ in range(100)]
        assert log.warn("service_refused", "beta", code="bad_request")
        now[0] += 60.0 / LOG_LINES_PER_MIN
        assert log.warn("service_refused", "alpha", code="bad_request")
    assert sum(logged) == LOG_BURST_LINES
    fields = [record.fields for record in caplog.records]  # type: ignore[attr-defined]
    assert [f["peer"] for f in fields].count("alpha") == LOG_BURST_LINES + 1
    assert fields[-1]["lines_left_out"] == 100 - LOG_BURST_LINES
