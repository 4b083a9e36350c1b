"""mac1, mac2 and cookie replies between a CookieGenerator (initiator) and a CookieChecker."""

from collections.abc import Callable

import pytest

from pilotif.wg import crypto
from pilotif.wg.constants import COOKIE_REFRESH_TIME_S
from pilotif.wg.cookie import (
    RENEWAL_SPREAD_S,
    RENEWED_COOKIE_LIFETIME_S,
    CookieChecker,
    CookieGenerator,
    RenewingCookieChecker,
    source_bytes,
)
from pilotif.wg.handshake import LocalIdentity, create_initiation
from pilotif.wg.messages import parse_cookie_reply

SOURCE = source_bytes(("198.18.0.1", 51820))
OTHER_SOURCE = source_bytes(("198.18.0.2", 51820))
SENDER_INDEX = 0x01020304
NOW = 1000.0
EPOCH_START = 10 * COOKIE_REFRESH_TIME_S
"""The start of a renewing checker's epoch (its secrets change at multiples of
COOKIE_REFRESH_TIME_S)."""


def _counting_random() -> Callable[[int], bytes]:
    """Deterministic, never-repeating bytes so tests can see what was drawn."""
    state = {"next": 0}

    def draw(size: int) -> bytes:
        state["next"] += 1
        return state["next"].to_bytes(size, "big")

    return draw


@pytest.fixture
def responder() -> LocalIdentity:
    return LocalIdentity.from_private_key(crypto.generate_private_key())


@pytest.fixture
def checker(responder: LocalIdentity) -> CookieChecker:
    return CookieChecker(responder, random_bytes=_counting_random())


@pytest.fixture
def generator(responder: LocalIdentity) -> CookieGenerator:
    return CookieGenerator(responder.public_key)


def _initiation(responder: LocalIdentity) -> bytearray:
    initiator = LocalIdentity.from_private_key(crypto.generate_private_key())
    message, _ = create_initiation(
        initiator,
        responder.public_key,
        SENDER_INDEX,
        crypto.tai64n(1_700_000_000.0),
        crypto.generate_private_key(),
    )
    return message


def _get_cookie(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator, now: float
) -> None:
    """The initiator sends once without a cookie, the checker replies, the generator takes it."""
    first = _initiation(responder)
    generator.add_macs(first, now)
    reply = checker.create_reply(first, SENDER_INDEX, SOURCE, now)
    assert generator.consume_reply(reply, now)


def test_mac1_verifies(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    message = _initiation(responder)
    generator.add_macs(message, NOW)
    assert checker.check_mac1(message)
    assert checker.check_mac1(bytes(message))
    assert message[132:] == bytes(16), "no cookie yet: mac2 stays zero"


@pytest.mark.parametrize("position", [0, 4, 7, 50, 115, 116, 131])
def test_mac1_fails_when_tampered(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator, position: int
) -> None:
    message = _initiation(responder)
    generator.add_macs(message, NOW)
    message[position] ^= 0x01
    assert not checker.check_mac1(message)


def test_mac1_for_another_responder_fails(responder: LocalIdentity) -> None:
    bystander = LocalIdentity.from_private_key(crypto.generate_private_key())
    message = _initiation(responder)
    CookieGenerator(responder.public_key).add_macs(message, NOW)
    assert not CookieChecker(bystander).check_mac1(message)


def test_mac2_fails_without_a_cookie(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    message = _initiation(responder)
    generator.add_macs(message, NOW)
    checker.create_reply(message, SENDER_INDEX, SOURCE, NOW)
    assert not checker.check_mac2(message, SOURCE, NOW)


def test_cookie_reply_layout(responder: LocalIdentity, checker: CookieChecker) -> None:
    message = _initiation(responder)
    CookieGenerator(responder.public_key).add_macs(message, NOW)
    reply = checker.create_reply(message, SENDER_INDEX, SOURCE, NOW)
    assert len(reply) == 64
    assert reply[:4] == b"\x03\0\0\0"
    parsed = parse_cookie_reply(reply)
    assert parsed.receiver == SENDER_INDEX
    assert parsed.nonce == (2).to_bytes(24, "big"), "first draw is the secret, then the nonce"


def test_a_reply_is_accepted_and_then_mac2_passes(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    _get_cookie(responder, checker, generator, NOW)
    retry = _initiation(responder)
    generator.add_macs(retry, NOW + 1)
    assert retry[132:] != bytes(16)
    assert checker.check_mac1(retry)
    assert checker.check_mac2(retry, SOURCE, NOW + 1)


def test_mac2_fails_from_another_source(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    _get_cookie(responder, checker, generator, NOW)
    retry = _initiation(responder)
    generator.add_macs(retry, NOW)
    assert not checker.check_mac2(retry, OTHER_SOURCE, NOW)


def test_mac2_fails_after_the_secret_rotates(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    _get_cookie(responder, checker, generator, NOW)
    retry = _initiation(responder)
    generator.add_macs(retry, NOW + 10)
    later = NOW + COOKIE_REFRESH_TIME_S + 1
    assert not checker.check_mac2(retry, SOURCE, later)
    checker.create_reply(retry, SENDER_INDEX, SOURCE, later)
    assert not checker.check_mac2(retry, SOURCE, later), "the new secret makes another cookie"


def test_mac2_fails_when_the_message_is_tampered(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    _get_cookie(responder, checker, generator, NOW)
    retry = _initiation(responder)
    generator.add_macs(retry, NOW)
    retry[140] ^= 0x01
    assert not checker.check_mac2(retry, SOURCE, NOW)


def test_generator_stops_using_a_cookie_before_it_expires(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    _get_cookie(responder, checker, generator, NOW)
    late = _initiation(responder)
    generator.add_macs(late, NOW + COOKIE_REFRESH_TIME_S - 1)
    assert late[132:] == bytes(16)


def test_a_reply_before_any_message_is_refused(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    message = _initiation(responder)
    CookieGenerator(responder.public_key).add_macs(message, NOW)
    reply = checker.create_reply(message, SENDER_INDEX, SOURCE, NOW)
    assert not generator.consume_reply(reply, NOW)


def test_a_reply_to_an_older_message_is_refused(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator
) -> None:
    first, second = _initiation(responder), _initiation(responder)
    generator.add_macs(first, NOW)
    reply = checker.create_reply(first, SENDER_INDEX, SOURCE, NOW)
    generator.add_macs(second, NOW)
    assert not generator.consume_reply(reply, NOW)


@pytest.mark.parametrize("position", [0, 8, 31, 40, 63])
def test_a_tampered_reply_is_refused(
    responder: LocalIdentity, checker: CookieChecker, generator: CookieGenerator, position: int
) -> None:
    message = _initiation(responder)
    generator.add_macs(message, NOW)
    reply = bytearray(checker.create_reply(message, SENDER_INDEX, SOURCE, NOW))
    reply[position] ^= 0x01
    assert not generator.consume_reply(reply, NOW)


def test_a_reply_from_another_responder_is_refused(
    responder: LocalIdentity, generator: CookieGenerator
) -> None:
    bystander = LocalIdentity.from_private_key(crypto.generate_private_key())
    message = _initiation(responder)
    generator.add_macs(message, NOW)
    reply = CookieChecker(bystander).create_reply(message, SENDER_INDEX, SOURCE, NOW)
    assert not generator.consume_reply(reply, NOW)


@pytest.mark.parametrize(
    ("host", "packed"),
    [
        ("198.18.0.1", bytes([198, 18, 0, 1])),
        ("2001:db8::5", bytes.fromhex("20010db8000000000000000000000005")),
        ("::ffff:198.18.0.1", bytes.fromhex("00000000000000000000ffffc6120001")),
        ("fe80::1%eth0", bytes.fromhex("fe800000000000000000000000000001")),
    ],
)
def test_source_bytes_pack_the_address_and_big_endian_port(host: str, packed: bytes) -> None:
    assert source_bytes((host, 51820)) == packed + bytes([0xCA, 0x6C])


def test_a_renewing_checker_takes_a_cookie_of_the_secret_before_and_says_so(
    responder: LocalIdentity,
) -> None:
    checker = RenewingCookieChecker(responder, random_bytes=_counting_random())
    generator = CookieGenerator(responder.public_key, RENEWED_COOKIE_LIFETIME_S)
    _get_cookie(responder, checker, generator, EPOCH_START)
    message = _initiation(responder)
    generator.add_macs(message, EPOCH_START + COOKIE_REFRESH_TIME_S - 1)
    assert checker.cookie_age(message, SOURCE, EPOCH_START + COOKIE_REFRESH_TIME_S - 1) == "current"
    later = EPOCH_START + COOKIE_REFRESH_TIME_S
    message = _initiation(responder)
    generator.add_macs(message, later)
    # Good, and due for renewal at the source's own time within RENEWAL_SPREAD_S.
    assert checker.cookie_age(message, SOURCE, later) == "previous"
    assert checker.check_mac2(message, SOURCE, later)
    assert checker.cookie_age(message, SOURCE, later + RENEWAL_SPREAD_S) == "due"
    assert checker.cookie_age(message, OTHER_SOURCE, later) is None
    # The renewal is a cookie of the new secret.
    generator.consume_reply(checker.create_reply(message, 1, SOURCE, later), later)
    renewed = _initiation(responder)
    generator.add_macs(renewed, later + 1)
    assert checker.cookie_age(renewed, SOURCE, later + 1) == "current"


def test_a_renewing_checker_refuses_a_cookie_two_secrets_old(responder: LocalIdentity) -> None:
    checker = RenewingCookieChecker(responder, random_bytes=_counting_random())
    generator = CookieGenerator(responder.public_key, 10 * COOKIE_REFRESH_TIME_S)
    _get_cookie(responder, checker, generator, EPOCH_START)
    message = _initiation(responder)
    generator.add_macs(message, EPOCH_START)
    replaced = EPOCH_START + COOKIE_REFRESH_TIME_S
    assert checker.cookie_age(message, SOURCE, replaced) == "previous"
    assert checker.cookie_age(message, SOURCE, replaced + COOKIE_REFRESH_TIME_S) is None


def test_a_renewing_checker_started_again_takes_the_cookies_it_gave(
    responder: LocalIdentity,
) -> None:
    """Its secrets are its key's and the epoch's: a registry restarted (or a replica with
    the same key) spares each returning node a cookie round trip; another key's checker
    takes none of them."""
    first = RenewingCookieChecker(responder)
    generator = CookieGenerator(responder.public_key, RENEWED_COOKIE_LIFETIME_S)
    _get_cookie(responder, first, generator, EPOCH_START)
    message = _initiation(responder)
    generator.add_macs(message, EPOCH_START + 1)
    again = RenewingCookieChecker(responder)
    assert again.cookie_age(message, SOURCE, EPOCH_START + 1) == "current"
    assert again.cookie_age(message, SOURCE, EPOCH_START + COOKIE_REFRESH_TIME_S + 1) in (
        "previous",
        "due",
    )
    other = LocalIdentity.from_private_key(crypto.generate_private_key())
    assert RenewingCookieChecker(other).cookie_age(message, SOURCE, EPOCH_START + 1) is None
