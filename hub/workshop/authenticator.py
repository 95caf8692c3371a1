"""Sign-in for the workshop hub.

Attendees create their own account on /hub/signup with the event access code
shown by the instructor; a correct code authorizes the account at once.
Instructors listed in config get admin accounts created at hub start with
passwords from config, so they never sign up. Passwords are stored as bcrypt
hashes by NativeAuthenticator, which this class extends.

Failed sign-ins are throttled twice: per username (NativeAuthenticator's
`allowed_failed_logins` / `seconds_before_next_try`) and per client address.
The client address is taken from the X-Forwarded-For entry appended by the
proxy in front of the hub, and only when the request really came from that
proxy (see `WorkshopAuthenticator.client_ip`); tornado's `remote_ip` is not
used because it obeys a client-supplied X-Real-Ip header, which
configurable-http-proxy passes through untouched.
"""

import collections
import difflib
import hmac
import ipaddress
import math
import os
import re
import socket
import time
from datetime import datetime

import bcrypt
from jinja2 import ChoiceLoader, FileSystemLoader
from jupyterhub.handlers import BaseHandler
from jupyterhub.handlers.login import LoginHandler
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.orm import UserInfo
from tornado import web
from traitlets import (
    Dict,
    Integer,
    List,
    Set,
    TraitError,
    Unicode,
    default,
    validate,
)

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")

# Usernames become unix user names and docker container/volume names, so they
# are held to the intersection of what those accept.
USERNAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{1,31}")
USERNAME_RULE = (
    "2 to 32 characters: lowercase letters, digits, '-' and '_', "
    "starting with a letter (for example 'ada-lovelace')"
)

# bcrypt only looks at the first 72 bytes, and bcrypt>=5 refuses longer input.
BCRYPT_MAX_BYTES = 72


def _parse_ip(text):
    """The address in `text` as an ipaddress object (IPv4-mapped IPv6 unwrapped), or None."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _wait_text(seconds):
    """'37 seconds' / '2 minutes' for a refusal message."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


class _TemplateMixin:
    """Makes this module's templates findable from the hub's jinja environment."""

    _workshop_templates_added = False

    def initialize(self, *args, **kwargs):
        super().initialize(*args, **kwargs)
        if not _TemplateMixin._workshop_templates_added:
            # Error pages are rendered from the synchronous twin of the
            # environment, and login errors become login pages, so both need it.
            for key in ("jinja2_env", "jinja2_env_sync"):
                env = self.settings.get(key)
                if env is not None:
                    env.loader = ChoiceLoader([env.loader, FileSystemLoader([TEMPLATE_DIR])])
            _TemplateMixin._workshop_templates_added = True


class WorkshopLoginHandler(_TemplateMixin, LoginHandler):
    """The hub's own login form, plus a link to sign-up.

    Throttling refusals are raised as HTTP errors by the authenticator; the
    hub's LoginHandler renders those on the login form itself.
    """

    def render_template(self, name, **ns):
        if name == "login.html":
            name = "workshop-login.html"
            ns.setdefault("enable_signup", self.authenticator.enable_signup)
        return super().render_template(name, **ns)


class WorkshopSignUpHandler(_TemplateMixin, BaseHandler):
    """Sign-up form with the event access code; every refusal says why."""

    def _form(self, **ns):
        return self.render_template(
            "workshop-signup.html",
            access_code_hint=self.authenticator.access_code_hint,
            event_name=self.authenticator.event_name,
            minimum_password_length=self.authenticator.minimum_password_length,
            username_rule=USERNAME_RULE,
            **ns,
        )

    async def get(self):
        if not self.authenticator.enable_signup:
            raise web.HTTPError(404)
        self.finish(await self._form())

    async def post(self):
        auth = self.authenticator
        if not auth.enable_signup:
            raise web.HTTPError(404)
        username = self.get_body_argument("username", "", strip=True)
        password = self.get_body_argument("signup_password", "", strip=False)
        confirmation = self.get_body_argument(
            "signup_password_confirmation", "", strip=False
        )
        access_code = self.get_body_argument("access_code", "", strip=True)

        client_ip = auth.client_ip(self)
        refusal = auth.signup_refusal(
            username, password, confirmation, access_code, client_ip
        )
        if refusal is None:
            name = auth.normalize_username(username)
            if auth.create_user(name, password, is_authorized=True) is None:
                refusal = "The account could not be created. Please try again."
            else:
                self.log.info("Attendee %s signed up from %s", name, client_ip)
                html = await self._form(
                    alert="alert-success",
                    message=(
                        f"Your account '{name}' is ready. "
                        "Sign in with it now."
                    ),
                    signed_up=True,
                )
                self.finish(html)
                return

        self.log.info("Refused sign-up for %r from %s: %s", username, client_ip, refusal)
        self.set_status(429 if auth.ip_blocked_for(client_ip) else 400)
        html = await self._form(alert="alert-danger", message=refusal, username=username)
        self.finish(html)


class WorkshopAuthenticator(NativeAuthenticator):
    """NativeAuthenticator with an event access code, configured instructors and per-address throttling."""

    access_code = Unicode(
        "",
        config=True,
        help="""
        Event access code attendees must enter to sign up, e.g. shown on the
        first slide. Compared ignoring case and surrounding spaces.
        Required (at least 6 characters) while enable_signup is True.
        """,
    )

    event_name = Unicode(
        "",
        config=True,
        help="Name of the event, shown on the sign-up page (e.g. 'Deep Learning Bootcamp 2025').",
    )

    access_code_hint = Unicode(
        "Ask your instructor for the code on the first slide.",
        config=True,
        help="Sentence shown next to the access code field and when a code is wrong.",
    )

    instructors = Set(
        Unicode(),
        config=True,
        help="""
        Usernames of the instructors. They are hub admins, their accounts are
        created at hub start (see instructor_passwords) and nobody can sign
        up under these names.
        """,
    )

    instructor_passwords = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""
        Password for each instructor, by username. At every hub start the
        instructor's account is created with this password, or its stored
        hash is updated if the password changed. An instructor without an
        entry keeps whatever account already exists.
        """,
    )

    reserved_usernames = Set(
        Unicode(),
        {
            "admin", "administrator", "root", "daemon", "nobody", "jovyan",
            "hub", "jupyter", "jupyterhub", "proxy", "instructor", "docker",
        },
        config=True,
        help="""
        Usernames nobody may sign up with, because they collide with system
        accounts or would look official.
        """,
    )

    minimum_password_length = Integer(
        8,
        config=True,
        help="Shortest password accepted at sign-up, in characters (1 to 72).",
    )

    allowed_failed_logins = Integer(
        5,
        config=True,
        help="""
        Failed sign-ins in a row after which that username is blocked for
        seconds_before_next_try, even with the right password. 0 turns the
        per-user block off.
        """,
    )

    seconds_before_next_try = Integer(
        60,
        config=True,
        help="How long a username stays blocked after too many failed sign-ins, in seconds.",
    )

    allowed_failed_logins_per_ip = Integer(
        20,
        config=True,
        help="""
        Failed sign-ins (and wrong access codes) from one client address
        within failed_logins_per_ip_window after which that address is
        blocked for seconds_before_next_try_per_ip. A classroom behind one
        NAT shares an address, so keep this well above the class size's
        typo rate. 0 turns the per-address block off.
        """,
    )

    failed_logins_per_ip_window = Integer(
        300,
        config=True,
        help="Window, in seconds, over which failures from one address are counted.",
    )

    seconds_before_next_try_per_ip = Integer(
        120,
        config=True,
        help="How long a client address stays blocked, in seconds.",
    )

    trusted_proxy_networks = List(
        Unicode(),
        ["127.0.0.0/8", "::1/128"],
        config=True,
        help="""
        Networks (CIDR) of the proxy that forwards browser requests to the
        hub, normally configurable-http-proxy on the same host. Only requests
        whose TCP peer is in one of these networks have their
        X-Forwarded-For header believed; for anything else the TCP peer is
        the client. Never include networks attendees' containers live in.
        """,
    )

    trusted_proxy_hops = Integer(
        1,
        config=True,
        help="""
        How many proxies in front of the hub append to X-Forwarded-For:
        1 for configurable-http-proxy alone, 2 if e.g. nginx or Caddy
        terminates TLS in front of it. The client is the entry that many
        places from the right.
        """,
    )

    @default("allow_all")
    def _default_allow_all(self):
        # NativeAuthenticator's per-account is_authorized flag is the allow
        # list: authenticate() fails for accounts that are not authorized.
        return True

    @validate("access_code")
    def _check_access_code(self, proposal):
        code = proposal.value.strip()
        if code and len(code) < 6:
            raise TraitError(
                f"access_code {code!r} is too short to keep strangers out; "
                "use at least 6 characters"
            )
        return code

    @validate("instructors")
    def _check_instructors(self, proposal):
        names = set()
        for name in proposal.value:
            normalized = name.strip().lower()
            if not USERNAME_PATTERN.fullmatch(normalized):
                raise TraitError(
                    f"instructor name {name!r} is not a valid username; use {USERNAME_RULE}"
                )
            names.add(normalized)
        return names

    @validate("instructor_passwords")
    def _check_instructor_passwords(self, proposal):
        passwords = {}
        for name, password in proposal.value.items():
            if not password:
                raise TraitError(
                    f"instructor_passwords[{name!r}] is empty; give the instructor a password"
                )
            if len(password.encode()) > BCRYPT_MAX_BYTES:
                raise TraitError(
                    f"instructor_passwords[{name!r}] is longer than {BCRYPT_MAX_BYTES} bytes; "
                    "bcrypt would ignore the rest, use a shorter password"
                )
            passwords[name.strip().lower()] = password
        return passwords

    @validate("minimum_password_length")
    def _check_minimum_password_length(self, proposal):
        if not 1 <= proposal.value <= BCRYPT_MAX_BYTES:
            raise TraitError(
                f"minimum_password_length {proposal.value} is out of range; "
                f"use a number from 1 to {BCRYPT_MAX_BYTES}, e.g. 8"
            )
        return proposal.value

    @validate(
        "allowed_failed_logins",
        "allowed_failed_logins_per_ip",
    )
    def _check_not_negative(self, proposal):
        if proposal.value < 0:
            raise TraitError(
                f"{proposal.trait.name} {proposal.value} is negative; "
                "use 0 to turn the block off or a positive count"
            )
        return proposal.value

    @validate(
        "seconds_before_next_try",
        "seconds_before_next_try_per_ip",
        "failed_logins_per_ip_window",
        "trusted_proxy_hops",
    )
    def _check_positive(self, proposal):
        if proposal.value < 1:
            raise TraitError(
                f"{proposal.trait.name} {proposal.value} must be at least 1"
            )
        return proposal.value

    @validate("trusted_proxy_networks")
    def _check_networks(self, proposal):
        for net in proposal.value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise TraitError(
                    f"trusted_proxy_networks entry {net!r} is not a network; "
                    "write it like 127.0.0.0/8 or 10.0.0.5/32"
                ) from None
        return proposal.value

    @validate("allow_2fa", "ask_email_on_signup", "import_from_firstuse")
    def _check_unsupported_flag(self, proposal):
        if proposal.value:
            raise TraitError(
                f"WorkshopAuthenticator does not support {proposal.trait.name}; "
                "attendees sign up with the event access code. Remove that setting."
            )
        return proposal.value

    @validate("allow_self_approval_for")
    def _check_no_self_approval(self, proposal):
        if proposal.value:
            raise TraitError(
                "WorkshopAuthenticator does not support allow_self_approval_for "
                "(email approval); attendees sign up with the event access code. "
                "Remove that setting."
            )
        return proposal.value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._check_config()
        self._ip_failures = collections.defaultdict(collections.deque)
        self._ip_blocked_until = {}
        self.admin_users = set(self.admin_users) | self.instructors
        for name in sorted(self.instructors):
            self.ensure_instructor_account(name)

    def _check_config(self):
        """Fail hub start on settings that are wrong only in combination."""
        known = self.trait_names(config=True)
        for key in self.config.get(type(self).__name__, {}):
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {near[0]!r}?" if near else "check the spelling"
                raise ValueError(f"{type(self).__name__}.{key} is not a setting; {hint}")
        if self.enable_signup and not self.access_code:
            raise ValueError(
                "WorkshopAuthenticator.access_code is empty; set it to the code "
                "you will show attendees, or set enable_signup = False"
            )
        unknown = set(self.instructor_passwords) - self.instructors
        if unknown:
            raise ValueError(
                f"instructor_passwords has passwords for {sorted(unknown)}, who are "
                "not in instructors; add them to instructors or remove the entries"
            )
        for name, password in self.instructor_passwords.items():
            if len(password) < self.minimum_password_length:
                raise ValueError(
                    f"instructor_passwords[{name!r}] is shorter than "
                    f"minimum_password_length ({self.minimum_password_length}); "
                    "use a longer password"
                )

    def ensure_instructor_account(self, name):
        """Create or update an instructor's account so the configured password works; no-op if it already does."""
        password = self.instructor_passwords.get(name)
        info = self.get_user(name)
        if password is None:
            if info is None:
                self.log.warning(
                    "Instructor %s has no account and no entry in instructor_passwords; "
                    "they cannot sign in until one is configured",
                    name,
                )
            return
        if info is None:
            # Not create_user(): that refuses when enable_signup is False and
            # when the password is a common one, neither of which should stop
            # an instructor account.
            self.db.add(
                UserInfo(username=name, password=self._hash(password), is_authorized=True)
            )
            self.db.commit()
            self.log.info("Created instructor account %s", name)
            return
        changed = False
        if not info.is_valid_password(password):
            info.password = self._hash(password)
            changed = True
            self.log.info("Updated the stored password of instructor %s", name)
        if not info.is_authorized:
            info.is_authorized = True
            changed = True
        if changed:
            self.db.commit()

    @staticmethod
    def _hash(password):
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt())

    def validate_username(self, username):
        """Names must suit unix users and docker containers; see USERNAME_RULE."""
        return bool(USERNAME_PATTERN.fullmatch(username)) and super().validate_username(
            username
        )

    def is_admin(self, handler, authentication):
        """Instructors are admins; everyone else keeps their current admin flag."""
        if authentication["name"] in self.instructors:
            return True
        return super().is_admin(handler, authentication)

    def access_code_matches(self, code):
        """Whether `code` is the event access code (case and surrounding spaces ignored)."""
        given = code.strip().casefold().encode()
        expected = self.access_code.casefold().encode()
        return bool(expected) and hmac.compare_digest(given, expected)

    def signup_refusal(self, username, password, confirmation, access_code, client_ip):
        """Why this sign-up must be refused, as a sentence for the attendee; None if it may go ahead."""
        wait = self.ip_blocked_for(client_ip)
        if wait:
            return self._ip_block_message(wait)
        # The code is checked first so that strangers learn nothing about
        # which usernames exist.
        if not access_code:
            return f"The event access code is missing. {self.access_code_hint}"
        if not self.access_code_matches(access_code):
            self.record_ip_failure(client_ip)
            wait = self.ip_blocked_for(client_ip)
            if wait:
                return self._ip_block_message(wait)
            return f"That event access code is wrong. {self.access_code_hint}"
        name = self.normalize_username(username)
        if not name:
            return f"Choose a username: {USERNAME_RULE}."
        if not self.validate_username(name):
            return f"{username!r} can't be used as a username. Use {USERNAME_RULE}."
        if name in self.instructors:
            return f"The username {name!r} is reserved for an instructor; choose another one."
        if name in self.reserved_usernames:
            return f"The username {name!r} is reserved; choose another one."
        if self.user_exists(name):
            return (
                f"The username {name!r} is already taken; choose another one "
                "(or sign in, if it is yours)."
            )
        if len(password) < self.minimum_password_length:
            return (
                f"Your password must be at least {self.minimum_password_length} "
                f"characters long; the one you typed has {len(password)}."
            )
        if len(password.encode()) > BCRYPT_MAX_BYTES:
            return f"Your password is too long; use at most {BCRYPT_MAX_BYTES} characters."
        if password != confirmation:
            return "The two passwords don't match; type the same password in both fields."
        if self.check_common_password and self.is_password_common(password):
            return "That password is on a list of very common passwords; choose a less guessable one."
        return None

    def client_ip(self, handler):
        """The browser's address: the X-Forwarded-For entry added by our proxy if the request came through it, else the TCP peer."""
        context = handler.request.connection.context
        if context.address_family in (socket.AF_INET, socket.AF_INET6):
            peer = _parse_ip(context.address[0])
        else:
            peer = None  # a unix socket: only local processes can reach it
        if peer is not None and not self._is_trusted_proxy(peer):
            return str(peer)
        hops = [
            h for h in handler.request.headers.get("X-Forwarded-For", "").split(",") if h.strip()
        ]
        if not hops:
            return str(peer) if peer is not None else "local"
        # Entries further left than our own proxies' are whatever the client
        # chose to send, so only the one appended by the outermost trusted
        # proxy counts.
        chosen = _parse_ip(hops[max(len(hops) - self.trusted_proxy_hops, 0)])
        if chosen is None:
            return str(peer) if peer is not None else "local"
        return str(chosen)

    def _is_trusted_proxy(self, addr):
        return any(
            addr in ipaddress.ip_network(net, strict=False)
            for net in self.trusted_proxy_networks
        )

    def ip_blocked_for(self, ip):
        """Seconds until `ip` may try again, 0 if it is not blocked."""
        until = self._ip_blocked_until.get(ip)
        if until is None:
            return 0
        left = until - time.monotonic()
        if left <= 0:
            del self._ip_blocked_until[ip]
            return 0
        return left

    def record_ip_failure(self, ip):
        """Count a failure from `ip` and block it once it has too many within the window."""
        if not self.allowed_failed_logins_per_ip:
            return
        now = time.monotonic()
        failures = self._ip_failures[ip]
        failures.append(now)
        while failures and failures[0] <= now - self.failed_logins_per_ip_window:
            failures.popleft()
        if len(failures) >= self.allowed_failed_logins_per_ip:
            self._ip_blocked_until[ip] = now + self.seconds_before_next_try_per_ip
            failures.clear()
            self.log.warning(
                "Blocking sign-in from %s for %ss after %s failures",
                ip,
                self.seconds_before_next_try_per_ip,
                self.allowed_failed_logins_per_ip,
            )
        if len(self._ip_failures) > 10000:
            # Forget quiet addresses so a scan can't grow memory without bound.
            cutoff = now - self.failed_logins_per_ip_window
            for key in [k for k, v in self._ip_failures.items() if not v or v[-1] <= cutoff]:
                del self._ip_failures[key]

    def user_blocked_for(self, username):
        """Seconds until `username` may try again, 0 if it is not blocked."""
        if not self.allowed_failed_logins or not self.is_blocked(username):
            return 0
        elapsed = (datetime.now() - self.login_attempts[username]["time"]).total_seconds()
        # is_blocked() rounds down to whole seconds, so it can outlast this
        # estimate by up to a second; never report 0 while still blocked.
        return max(self.seconds_before_next_try - elapsed, 1)

    def _ip_block_message(self, wait):
        return (
            "Sign-in is temporarily blocked for your network address after too many "
            f"failed attempts. Try again in {_wait_text(wait)}."
        )

    def _user_block_message(self, username, wait):
        return (
            f"Sign-in for {username!r} is temporarily blocked after too many failed "
            f"attempts. Try again in {_wait_text(wait)}, or ask an instructor."
        )

    async def authenticate(self, handler, data):
        """NativeAuthenticator's check, refused early (with a message) for blocked users and addresses."""
        ip = self.client_ip(handler)
        username = self.normalize_username(data.get("username", ""))
        wait = self.ip_blocked_for(ip)
        if wait:
            raise web.HTTPError(429, self._ip_block_message(wait).replace("%", "%%"))
        wait = self.user_blocked_for(username)
        if wait:
            raise web.HTTPError(429, self._user_block_message(username, wait).replace("%", "%%"))

        if len(data.get("password", "").encode()) > BCRYPT_MAX_BYTES:
            # No stored password is this long; bcrypt>=5 would raise on it.
            if self.user_exists(username):
                self.add_login_attempt(username)
            result = None
        else:
            result = await super().authenticate(handler, {**data, "username": username})
        if result is not None:
            return result

        self.record_ip_failure(ip)
        self.log.info("Failed sign-in for %r from %s", username, ip)
        # Say so on the attempt that triggered a block, not only on the next one.
        wait = self.ip_blocked_for(ip)
        if wait:
            raise web.HTTPError(429, self._ip_block_message(wait).replace("%", "%%"))
        wait = self.user_blocked_for(username)
        if wait:
            raise web.HTTPError(429, self._user_block_message(username, wait).replace("%", "%%"))
        return None

    def get_handlers(self, app):
        """NativeAuthenticator's pages, with our own login and sign-up forms."""
        ours = {r"/login": WorkshopLoginHandler, r"/signup": WorkshopSignUpHandler}
        return [(path, ours.get(path, handler)) for path, handler in super().get_handlers(app)]
