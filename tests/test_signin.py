"""Sign-up and sign-in, driven through the real hub and configurable-http-proxy.

Each scenario that makes failed attempts connects from its own loopback
address (127.x.y.z), so the per-address throttle sees it as a separate
client and scenarios don't block one another.
"""

import itertools
import random
import re
import secrets
import time

import pytest
import requests

from hubclient import LoginFailed, login, signup, whoami

# A random second octet keeps reruns against a long-lived hub apart.
_addresses = (
    f"127.{random.randint(100, 250)}.{i // 250}.{i % 250 + 1}" for i in itertools.count()
)


def fresh_client_ip():
    """A loopback address no other scenario has used."""
    return next(_addresses)


def new_name(prefix="ada"):
    return f"{prefix}-{secrets.token_hex(3)}"


def new_password():
    return "pw-" + secrets.token_urlsafe(12)


def block_seconds(message):
    """The wait a 'temporarily blocked' message announces, in seconds."""
    match = re.search(r"(\d+) (second|minute)", message)
    assert match, f"block message does not say how long: {message!r}"
    return int(match.group(1)) * (60 if match.group(2) == "minute" else 1)


def registered_attendee(hub):
    """Sign up a new attendee and return (username, password)."""
    name, password = new_name(), new_password()
    ok, message = signup(hub.url, name, password, hub.access_code, source_ip=fresh_client_ip())
    assert ok, message
    return name, password


def fail_until_blocked(hub, attempt, limit=50):
    """Call attempt(i) (a sign-in that must fail) until the hub says it is blocked; return that message."""
    for i in range(limit):
        with pytest.raises(LoginFailed) as refused:
            attempt(i)
        if "temporarily blocked" in refused.value.message:
            return refused.value.message
        assert "invalid username or password" in refused.value.message.lower(), refused.value
    pytest.fail(f"still not blocked after {limit} failed sign-ins")


def api_user(hub, name):
    resp = requests.get(
        f"{hub.api_url}/users/{name}",
        headers={"Authorization": f"token {hub.api_token}"},
        timeout=30,
    )
    resp.raise_for_status()
    return resp.json()


def test_attendee_signs_up_with_the_code_and_lands_on_the_hub(hub):
    name, password = new_name(), new_password()

    ok, message = signup(hub.url, name, password, hub.access_code, source_ip=fresh_client_ip())
    assert ok, message
    assert name in message

    session = login(hub.url, name, password, source_ip=fresh_client_ip())
    home = session.get(f"{hub.url}/hub/home", timeout=30)
    assert home.status_code == 200 and "/hub/login" not in home.url
    me = whoami(hub.url, session)
    assert me["name"] == name
    assert me["admin"] is False


def test_wrong_or_missing_event_code_is_refused_and_no_account_exists(hub):
    name, password = new_name(), new_password()
    client = fresh_client_ip()

    ok, message = signup(hub.url, name, password, "not-the-code", source_ip=client)
    assert not ok
    assert "access code is wrong" in message
    assert "instructor" in message  # tells the attendee where to get it

    ok, message = signup(hub.url, name, password, "", source_ip=client)
    assert not ok
    assert "access code is missing" in message

    with pytest.raises(LoginFailed):
        login(hub.url, name, password, source_ip=fresh_client_ip())


def test_short_password_is_refused_with_the_minimum_length(hub):
    ok, message = signup(hub.url, new_name(), "short", hub.access_code, source_ip=fresh_client_ip())
    assert not ok
    assert re.search(r"at least \d+ characters", message), message


def test_taken_username_is_refused(hub):
    name, _ = registered_attendee(hub)

    ok, message = signup(hub.url, name, new_password(), hub.access_code, source_ip=fresh_client_ip())
    assert not ok
    assert "already taken" in message


@pytest.mark.parametrize(
    "username",
    ["Ada Lovelace", "9lives", "a", "x" * 33, "ada.lovelace", "ada/l", "ümlaut"],
)
def test_invalid_username_is_refused_with_the_rule(hub, username):
    ok, message = signup(hub.url, username, new_password(), hub.access_code, source_ip=fresh_client_ip())
    assert not ok
    assert "lowercase letters, digits" in message, message


def test_repeated_failed_logins_block_the_user_even_with_the_right_password(hub):
    name, password = registered_attendee(hub)

    # Every attempt from a new address, so only the per-user block can trigger.
    message = fail_until_blocked(
        hub, lambda i: login(hub.url, name, f"wrong-{i}", source_ip=fresh_client_ip())
    )
    assert name in message

    with pytest.raises(LoginFailed) as refused:
        login(hub.url, name, password, source_ip=fresh_client_ip())
    assert "temporarily blocked" in refused.value.message
    assert refused.value.status == 429

    wait = block_seconds(refused.value.message)
    if wait <= 15:
        time.sleep(wait + 1)
        login(hub.url, name, password, source_ip=fresh_client_ip())


def test_repeated_failures_from_one_client_block_that_client(hub):
    name, password = registered_attendee(hub)
    guesser = fresh_client_ip()

    message = fail_until_blocked(
        hub, lambda i: login(hub.url, new_name("guess"), "password1", source_ip=guesser)
    )
    assert "network address" in message

    # Blocked from that client, whatever the account...
    with pytest.raises(LoginFailed) as refused:
        login(hub.url, name, password, source_ip=guesser)
    assert "temporarily blocked" in refused.value.message
    ok, message = signup(hub.url, new_name(), new_password(), hub.access_code, source_ip=guesser)
    assert not ok and "temporarily blocked" in message

    # ...while everyone else carries on.
    login(hub.url, name, password, source_ip=fresh_client_ip())

    wait = block_seconds(refused.value.message)
    if wait <= 15:
        time.sleep(wait + 1)
        login(hub.url, name, password, source_ip=guesser)


def test_forged_forwarding_headers_do_not_dodge_the_client_block(hub):
    guesser = fresh_client_ip()

    def attempt(i):
        fake = f"10.9.{i // 250}.{i % 250 + 1}"
        login(
            hub.url,
            new_name("guess"),
            "password1",
            source_ip=guesser,
            headers={"X-Forwarded-For": fake, "X-Real-Ip": fake},
        )

    message = fail_until_blocked(hub, attempt)
    assert "network address" in message


def test_wrong_event_codes_from_one_client_get_it_blocked(hub):
    guesser = fresh_client_ip()
    for i in range(50):
        ok, message = signup(hub.url, new_name(), new_password(), f"guess-{i:04d}", source_ip=guesser)
        assert not ok
        if "temporarily blocked" in message:
            break
        assert "access code is wrong" in message
    else:
        pytest.fail("guessing event codes was never blocked")


def test_instructor_signs_in_without_signing_up_and_is_admin(hub):
    name, password = hub.instructor

    session = login(hub.url, name, password, source_ip=fresh_client_ip())
    assert whoami(hub.url, session)["admin"] is True
    assert api_user(hub, name)["admin"] is True


def test_nobody_can_sign_up_under_an_instructors_name(hub):
    name, password = hub.instructor

    ok, message = signup(hub.url, name, new_password(), hub.access_code, source_ip=fresh_client_ip())
    assert not ok
    assert "reserved for an instructor" in message

    # The instructor's own password still works.
    login(hub.url, name, password, source_ip=fresh_client_ip())


def test_attendee_cannot_open_the_authorization_area(hub):
    name, password = registered_attendee(hub)
    session = login(hub.url, name, password, source_ip=fresh_client_ip())

    resp = session.get(f"{hub.url}/hub/authorize", timeout=30)
    assert resp.status_code == 403


def test_hub_is_still_up_after_all_of_the_above(hub):
    assert requests.get(f"{hub.url}/hub/api/", timeout=30).ok
    name, password = registered_attendee(hub)
    session = login(hub.url, name, password, source_ip=fresh_client_ip())
    assert whoami(hub.url, session)["name"] == name
