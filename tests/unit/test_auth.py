"""Tokens and identities (server/auth.py): HS256 only, `sub` a non-empty string, `exp` with 30 s of
leeway, open mode minting fresh users, token mode requiring a token, and Bearer header parsing."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from server.auth import LEEWAY_S, Authenticator, AuthError, Identity, bearer_token

SECRET = "unit-test-secret-" + "k" * 60  # 64+ bytes: PyJWT warns about shorter HS512 keys
OTHER_SECRET = "another-secret-" + "z" * 60


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(SECRET, token_mode=True)


@pytest.fixture
def open_auth() -> Authenticator:
    return Authenticator(SECRET, token_mode=False)


# -- valid tokens --------------------------------------------------------------------------------------
@pytest.mark.parametrize("user_id", ["u-1", "alice@example.com", "ключ", "x" * 255])
def test_mint_then_verify_round_trips(auth, user_id):
    identity = auth.verify(auth.mint(user_id))
    assert identity == Identity(user_id, expires_at=None, minted_token=None)


def test_minted_token_is_hs256_with_sub(auth):
    token = auth.mint("u-1", ttl_s=600)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "u-1" and abs(claims["exp"] - (time.time() + 600)) < 5


def test_exp_is_reported(auth):
    exp = int(time.time()) + 3600
    assert auth.verify(signed({"sub": "u", "exp": exp})) == Identity("u", float(exp))


def test_token_from_any_issuer_with_the_secret_is_accepted(auth):
    assert auth.verify(signed({"sub": "ext-user", "iat": int(time.time()), "role": "x"})).user_id == "ext-user"


def test_expired_within_leeway_is_accepted(auth):
    assert LEEWAY_S == 30
    identity = auth.verify(auth.mint("u", ttl_s=-10))
    assert identity.user_id == "u" and identity.expired() is False


# -- refused tokens ------------------------------------------------------------------------------------
def forged(auth: Authenticator) -> str:
    """A valid token's signature on a payload naming someone else."""
    header, _, signature = auth.mint("victim").split(".")
    return ".".join([header, b64({"sub": "attacker"}), signature])


def tampered_signature(auth: Authenticator) -> str:
    header, payload, signature = auth.mint("u").split(".")
    middle = len(signature) // 2
    flipped = "B" if signature[middle] != "B" else "C"
    return ".".join([header, payload, signature[:middle] + flipped + signature[middle + 1:]])


BAD_TOKENS = {
    "forged payload": forged,
    "tampered signature": tampered_signature,
    "wrong key": lambda a: Authenticator(OTHER_SECRET, True).mint("u"),
    "alg none (PyJWT)": lambda a: jwt.encode({"sub": "u"}, None, algorithm="none"),
    "alg none (by hand)": lambda a: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'u'})}.",
    "alg None capitalised": lambda a: f"{b64({'alg': 'None', 'typ': 'JWT'})}.{b64({'sub': 'u'})}.",
    "HS384 same key": lambda a: signed({"sub": "u"}, algorithm="HS384"),
    "HS512 same key": lambda a: signed({"sub": "u"}, algorithm="HS512"),
    "HS256 header on HS512 signature": lambda a: ".".join(
        [b64({"alg": "HS256", "typ": "JWT"})] + signed({"sub": "u"}, algorithm="HS512").split(".")[1:]),
    "expired beyond leeway": lambda a: a.mint("u", ttl_s=-(LEEWAY_S + 30)),
    "expired long ago": lambda a: signed({"sub": "u", "exp": 1}),
    "not yet valid": lambda a: signed({"sub": "u", "nbf": int(time.time()) + 3600}),
    "exp not a number": lambda a: signed({"sub": "u", "exp": "later"}),
    "missing sub": lambda a: signed({"iat": int(time.time())}),
    "empty sub": lambda a: signed({"sub": ""}),
    "null sub": lambda a: signed({"sub": None}),
    "integer sub": lambda a: signed({"sub": 42}),
    "list sub": lambda a: signed({"sub": ["u"]}),
    "object sub": lambda a: signed({"sub": {"id": "u"}}),
    "sub holding a NUL": lambda a: signed({"sub": "u\x00v"}),
    "sub holding a lone surrogate": lambda a: signed({"sub": "u\udfff"}),
    "sub longer than a user id column": lambda a: signed({"sub": "x" * 256}),
    "garbage": lambda a: "not a token",
    "empty segments": lambda a: "..",
    "two segments": lambda a: ".".join(a.mint("u").split(".")[:2]),
    "payload not JSON": lambda a: f"{b64({'alg': 'HS256'})}.{base64.urlsafe_b64encode(b'nope').decode()}.x",
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_invalid_token_is_refused(auth, open_auth, make):
    token = make(auth)
    with pytest.raises(AuthError):
        auth.verify(token)
    # A token that is present must be valid in both modes.
    with pytest.raises(AuthError):
        open_auth.identify(token)
    with pytest.raises(AuthError):
        auth.identify(token)


# -- identify: the two modes ---------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, ""])
def test_token_mode_without_token_is_refused(auth, token):
    with pytest.raises(AuthError):
        auth.identify(token)


def test_token_mode_with_valid_token_is_that_user(auth):
    assert auth.identify(auth.mint("u-7")) == Identity("u-7")


@pytest.mark.parametrize("token", [None, ""])
def test_open_mode_without_token_mints_a_fresh_user_each_time(open_auth, token):
    first, second = open_auth.identify(token), open_auth.identify(token)
    assert first.user_id != second.user_id
    for identity in (first, second):
        assert identity.user_id and len(identity.user_id) <= 255
        assert identity.minted_token is not None
        # The minted token names that user, for this server and no other.
        assert open_auth.verify(identity.minted_token).user_id == identity.user_id
        with pytest.raises(AuthError):
            Authenticator(OTHER_SECRET, False).verify(identity.minted_token)


def test_open_mode_with_a_token_is_that_user_with_a_fresh_token(open_auth):
    # Every ready hands out a fresh token, so an active user never sees its token expire.
    first = open_auth.identify(None)
    identity = open_auth.identify(first.minted_token)
    assert identity.user_id == first.user_id and identity.minted_token is not None
    assert open_auth.verify(identity.minted_token).user_id == first.user_id


def test_open_mode_tokens_expire_after_the_ttl(open_auth):
    ttl = 30 * 86400
    identity = open_auth.identify(None)
    claims = jwt.decode(identity.minted_token, SECRET, algorithms=["HS256"])
    assert abs(claims["exp"] - (time.time() + ttl)) < 5
    assert identity.expires_at is not None and abs(identity.expires_at - claims["exp"]) < 2
    short = Authenticator(SECRET, False, open_mode_ttl_s=60)
    with pytest.raises(AuthError):
        short.identify(open_auth.mint("u-9", ttl_s=-3600))  # an expired one is refused
    renewed = short.identify(open_auth.mint("u-9", ttl_s=10))  # one about to expire is renewed
    assert renewed.user_id == "u-9" and renewed.expires_at is not None and renewed.expires_at > time.time() + 50


def test_open_mode_token_survives_a_new_authenticator_with_the_same_secret(open_auth):
    minted = open_auth.identify(None)
    assert Authenticator(SECRET, False).identify(minted.minted_token).user_id == minted.user_id


def test_new_secrets_are_long_and_distinct():
    secrets = {Authenticator.new_secret() for _ in range(20)}
    assert len(secrets) == 20 and all(len(s) >= 32 for s in secrets)


# -- Identity.expired ----------------------------------------------------------------------------------
@pytest.mark.parametrize("expires_at, now, expired", [
    (None, 10**12, False),
    (1000.0, 999.0, False),
    (1000.0, 1000.0, False),
    (1000.0, 1000.0 + LEEWAY_S, False),
    (1000.0, 1000.0 + LEEWAY_S + 0.5, True),
    (1000.0, 5000.0, True),
])
def test_identity_expired(expires_at, now, expired):
    assert Identity("u", expires_at).expired(now) is expired


def test_identity_expired_defaults_to_the_clock():
    assert Identity("u", time.time() - LEEWAY_S - 60).expired() is True
    assert Identity("u", time.time() + 3600).expired() is False


# -- bearer_token --------------------------------------------------------------------------------------
@pytest.mark.parametrize("header, token", [
    (None, None),
    ("", None),
    ("Bearer abc.def.ghi", "abc.def.ghi"),
    ("bearer abc", "abc"),
    ("BEARER abc", "abc"),
    ("Bearer   abc  ", "abc"),
    ("Bearer", None),
    ("Bearer ", None),
    ("Bearer    ", None),
    ("Basic dXNlcjpwYXNz", None),
    ("Token abc", None),
    ("Bearerabc", None),
    ("abc.def.ghi", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token
