"""Drive the hub's sign-up and sign-in forms the way a browser does.

Every test that needs an attendee or instructor session goes through here, so
the real HTML forms, cookies and _xsrf tokens are exercised each time.
"""

from html.parser import HTMLParser
from urllib.parse import quote, urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter

TIMEOUT = 30


class LoginFailed(Exception):
    """The hub refused a sign-in; `message` is the error shown on the page."""

    def __init__(self, username, status, message):
        super().__init__(f"sign-in as {username!r} refused (HTTP {status}): {message}")
        self.username = username
        self.status = status
        self.message = message


class _Page(HTMLParser):
    """The first form on a page, and the text of its alert/error box."""

    def __init__(self):
        super().__init__()
        self.form_action = None
        self.fields = {}
        self.message_parts = []
        self._in_message = 0
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if self._in_message:
            self._depth += 1
        elif "login_error" in classes or attrs.get("id") == "signup-result":
            self._in_message = 1
            self._depth = 1
        if tag == "form" and self.form_action is None:
            self.form_action = attrs.get("action") or ""
        if tag == "input" and attrs.get("name"):
            self.fields.setdefault(attrs["name"], attrs.get("value") or "")

    def handle_endtag(self, tag):
        if self._in_message:
            self._depth -= 1
            if self._depth == 0:
                self._in_message = 0

    def handle_data(self, data):
        if self._in_message:
            self.message_parts.append(data)

    @property
    def message(self):
        return " ".join(" ".join(self.message_parts).split())


def _parse(html):
    page = _Page()
    page.feed(html)
    return page


class _SourceAddressAdapter(HTTPAdapter):
    """Connect from a chosen local address, e.g. 127.0.0.7, to act as a distinct client."""

    def __init__(self, source_ip, **kwargs):
        self._source = (source_ip, 0)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)


def new_session(source_ip=None):
    """A requests session, optionally bound to a local source address."""
    session = requests.Session()
    if source_ip:
        adapter = _SourceAddressAdapter(source_ip)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session


def _hub(base_url, path):
    return base_url.rstrip("/") + "/hub/" + path


def _submit(session, page_url, values, headers=None):
    """Load the form at page_url and post it with `values` filled in, as a browser would."""
    page = session.get(page_url, headers=headers, timeout=TIMEOUT)
    page.raise_for_status()
    form = _parse(page.text)
    if "_xsrf" not in form.fields:
        raise AssertionError(f"no _xsrf field in the form at {page_url}")
    data = dict(form.fields)
    data.update(values)
    action = urljoin(page.url, form.form_action or page.url)
    return session.post(
        action, data=data, headers=headers, allow_redirects=False, timeout=TIMEOUT
    )


def signup(base_url, username, password, access_code, *, source_ip=None, headers=None):
    """Fill in the sign-up form; return (ok, message shown on the page)."""
    session = new_session(source_ip)
    resp = _submit(
        session,
        _hub(base_url, "signup"),
        {
            "access_code": access_code,
            "username": username,
            "signup_password": password,
            "signup_password_confirmation": password,
        },
        headers=headers,
    )
    result = _parse(resp.text)
    ok = resp.status_code == 200 and "alert-success" in resp.text
    return ok, result.message


def login(base_url, username, password, *, source_ip=None, headers=None):
    """Sign in through the login form; return the logged-in session or raise LoginFailed."""
    session = new_session(source_ip)
    resp = _submit(
        session,
        _hub(base_url, "login?next=" + quote(urlparse(_hub(base_url, "home")).path, safe="")),
        {"username": username, "password": password},
        headers=headers,
    )
    if resp.status_code in (301, 302, 303) and "login" not in resp.headers.get("Location", ""):
        return session
    message = _parse(resp.text).message or resp.reason
    raise LoginFailed(username, resp.status_code, message)


def whoami(base_url, session):
    """The hub's user model for a logged-in session (GET /hub/api/user with its cookies)."""
    # Cookie-authenticated API calls need the xsrf token echoed in a header.
    xsrf = session.cookies.get("_xsrf", path="/hub/") or session.cookies.get("_xsrf")
    resp = session.get(
        _hub(base_url, "api/user"),
        headers={"X-XSRFToken": xsrf} if xsrf else {},
        timeout=TIMEOUT,
    )
    resp.raise_for_status()
    return resp.json()
