"""S1 (alg=none, algorithm confusion) and S3 (key handling) with public-key servers.

``tests/api/test_auth.py`` covers an HS256 server (alg=none, HS512 with our secret, the
claims of S2, a ``jwk``/``jku``/``kid`` header signed with another secret). Here:

* an **RS256** server with its own key pair: tokens HMAC-signed with its *public* key in
  every encoding (PEM, DER, JWK JSON — CVE-2022-29217 / CVE-2026-48526), other
  algorithms from the header with the right key, ES256, alg=none, and attacker keys in
  ``jwk``/``jku``/``x5u``/``x5c`` headers (the key URLs point at a local server that
  counts requests: the server must never fetch them);
* a **JWKS** server (an external identity provider's key set with an RSA and an EC key):
  unknown ``kid``, ``kid`` with path characters or of the wrong type, a trusted key of
  the other family, the key set itself as an HMAC secret;
* servers that must **refuse to start**: an HMAC secret under 32 bytes, HMAC and
  public keys mixed, no key at all, an algorithm outside the allow-list.

Each family has a control token the server accepts, so every 401 is about the one
broken property.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.api.conftest import ROOT
from tests.security.conftest import (
    API,
    APP,
    KeyPair,
    Targets,
    b64url,
    ec_pair,
    figure,
    hmac_token,
    rsa_pair,
    signed_token,
    unsigned_token,
)
from tests.security.conftest import (
    client as http_client,
)
from tests.servers import (
    Server,
    claims,
    free_port,
    serve_command,
    server_env,
    start_server,
    stop_server,
)


@dataclass
class Keys:
    server: KeyPair  # the RS256 server's own pair
    idp: KeyPair  # the identity provider's RSA key (kid idp-1 in the JWKS)
    idp_ec: KeyPair  # the identity provider's EC key (kid ec-1 in the JWKS)
    attacker: KeyPair  # RSA
    attacker_ec: KeyPair
    jwks_text: str


@dataclass
class TokenServers:
    rs256: Server  # app_server: RS256 with the key pair keys.server
    jwks: Server  # an identity provider's JWKS, no key to issue tokens with
    admin_id: str  # of the RS256 server


@pytest.fixture(scope="module")
def keys(server_keys: KeyPair) -> Keys:
    idp, idp_ec = rsa_pair(), ec_pair()
    jwks = {
        "keys": [
            idp.public_jwk(kid="idp-1", alg="RS256", use="sig"),
            idp_ec.public_jwk(kid="ec-1", alg="ES256", use="sig"),
        ]
    }
    return Keys(server_keys, idp, idp_ec, rsa_pair(), ec_pair(), json.dumps(jwks))


@pytest.fixture(scope="module")
def jwks_server(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("jwks")
    jwks = tmp / "jwks.json"
    jwks.write_text(keys.jwks_text)
    server = start_server(
        f"sqlite:///{tmp / 'jwks.db'}",
        tmp,
        app=APP,
        workers=0,
        extra_env={"CONVEYOR_JWT_ALGORITHM": "RS256", "CONVEYOR_JWT_JWKS": f"@{jwks}"},
        issues_tokens=False,
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def token_servers(app_sqlite: Server, jwks_server: Server) -> TokenServers:
    with http_client(app_sqlite, app_sqlite.admin_token) as admin:
        me = admin.get(f"{API}/me")
        assert me.status_code == 200, me.text
    return TokenServers(app_sqlite, jwks_server, me.json()["id"])


def accepted(server: Server, token: str) -> list[str]:
    """The probes (a read and a write) on which ``token`` was NOT refused with 401."""
    let_in = []
    with http_client(server, token) as http:
        for method, path, body in (
            ("GET", f"{API}/me", None),
            ("POST", f"{API}/jobs", {"task": "echo", "input": {"text": "forged"}}),
        ):
            response = http.request(method, path, json=body)
            if response.status_code != 401:
                let_in.append(f"{method} {path} -> {response.status_code}")
            else:
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    return let_in


def refuse_all(server: Server, forged: dict[str, str]) -> dict[str, list[str]]:
    return {kind: found for kind, token in forged.items() if (found := accepted(server, token))}


# -- controls ----------------------------------------------------------------------------------


def test_rs256_control_tokens_are_accepted(token_servers: TokenServers, keys: Keys) -> None:
    server = token_servers.rs256
    issued = server.admin_token
    header = json.loads(base64.urlsafe_b64decode(issued.split(".")[0] + "==").decode())
    assert header["alg"] == "RS256", header
    ours = signed_token(keys.server.private, claims(token_servers.admin_id, roles=["admin"]))
    for token in (issued, ours):
        with http_client(server, token) as http:
            me = http.get(f"{API}/me")
            assert me.status_code == 200, me.text
            assert me.json()["id"] == token_servers.admin_id


def test_jwks_control_token_is_accepted(jwks_server: Server, keys: Keys) -> None:
    server = jwks_server
    token = signed_token(keys.idp.private, claims("idp-user-1", name="alice"), kid="idp-1")
    with http_client(server, token) as http:
        me = http.get(f"{API}/me")
        assert me.status_code == 200, me.text
        assert me.json() == {"id": "idp-user-1", "username": "alice", "roles": ["user"]}
    with http_client(server) as anonymous:
        # the server only verifies: it has no key to issue tokens with
        login = anonymous.post(f"{API}/auth/token", json={"username": "admin", "password": "x"})
        assert login.status_code == 404, login.text


# -- S1: algorithm confusion -------------------------------------------------------------------


def test_algorithm_confusion_on_an_rs256_server_is_refused(
    token_servers: TokenServers, keys: Keys
) -> None:
    server = token_servers.rs256
    body = claims(token_servers.admin_id, roles=["admin"])
    pem = keys.server.public_pem.encode()
    jwk_json = json.dumps(keys.server.public_jwk()).encode()
    valid = signed_token(keys.server.private, body)
    forged: dict[str, str] = {
        "HS256 keyed with our public PEM": hmac_token(pem, body),
        "HS256 keyed with our public PEM, no trailing newline": hmac_token(pem.strip(), body),
        "HS256 keyed with our public key DER": hmac_token(keys.server.public_der, body),
        "HS256 keyed with our public key as JWK JSON": hmac_token(jwk_json, body),
        "HS384 keyed with our public PEM": hmac_token(pem, body, alg="HS384"),
        "HS512 keyed with our public PEM": hmac_token(pem, body, alg="HS512"),
        "hs256 (lower case) keyed with our public PEM": hmac_token(
            pem, body, raw_header={"alg": "hs256", "typ": "JWT"}
        ),
        "RS512 with our private key (algorithm from the header)": signed_token(
            keys.server.private, body, alg="RS512"
        ),
        "RS384 with our private key": signed_token(keys.server.private, body, alg="RS384"),
        "PS256 with our private key": signed_token(keys.server.private, body, alg="PS256"),
        "ES256 with an attacker EC key": signed_token(keys.attacker_ec.private, body, alg="ES256"),
        "RS256 with an attacker RSA key": signed_token(keys.attacker.private, body),
        "alg none": unsigned_token(body),
        "alg None": unsigned_token(body, alg="None"),
        "alg NONE": unsigned_token(body, alg="NONE"),
        "alg none with our RS256 signature kept": unsigned_token(body) + valid.rsplit(".", 1)[1],
        "alg as a list, HMAC with our public PEM": hmac_token(
            pem, body, raw_header={"alg": ["RS256", "HS256"], "typ": "JWT"}
        ),
        "no alg, HMAC with our public PEM": hmac_token(pem, body, raw_header={"typ": "JWT"}),
        "RS256 header over an HMAC signature keyed with our public PEM": hmac_token(
            pem, body, raw_header={"alg": "RS256", "typ": "JWT"}
        ),
    }
    let_in = refuse_all(server, forged)
    figure(
        "S1",
        f"RS256 server: accepted forged tokens {len(let_in)}/{len(forged)} "
        f"(HMAC with our public key in PEM/DER/JWK, RS512/RS384/PS256/ES256, alg none x4)",
    )
    assert not let_in, f"forged tokens were accepted: {let_in}"
    assert len(accepted(server, valid)) == 2, "the control token signed by our key was refused"


def test_claims_are_checked_with_public_keys_too(token_servers: TokenServers, keys: Keys) -> None:
    """S2 on the RS256 server, signed with the server's own private key."""
    server = token_servers.rs256
    sub = token_servers.admin_id
    now = int(time.time())
    variants = {
        "no exp": claims(sub, exp=None),
        "no iat": claims(sub, iat=None),
        "no sub": claims(sub, sub=None),
        "expired": claims(sub, iat=now - 7200, nbf=None, exp=now - 300),
        "nbf in the future": claims(sub, nbf=now + 3600),
        "wrong audience": claims(sub, aud="someone-else"),
        "no audience": claims(sub, aud=None),
        "wrong issuer": claims(sub, iss="evil"),
        "lifetime over the maximum": claims(sub, exp=now + 86_400 + 3600),
        "sub not a string": claims(sub, sub=12345),
    }
    forged = {k: signed_token(keys.server.private, v) for k, v in variants.items()}
    let_in = refuse_all(server, forged)
    figure("S2", f"RS256 server: accepted bad-claim tokens {len(let_in)}/{len(forged)}")
    assert not let_in, let_in


# -- S3: keys only from our configuration -------------------------------------------------------


def self_signed(pair: KeyPair) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pair.public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(pair.private, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def attacker_headers(keys: Keys, targets: Targets, kid: str) -> dict[str, dict[str, Any]]:
    return {
        "jwk": {"jwk": keys.attacker.public_jwk(kid=kid), "kid": kid},
        "jku": {"jku": targets.public.url("/jwks.json"), "kid": kid},
        "x5u": {"x5u": targets.public.url("/cert.pem"), "kid": kid},
        "x5c": {"x5c": [self_signed(keys.attacker)], "kid": kid},
        "jwk+jku+x5u": {
            "jwk": keys.attacker.public_jwk(kid=kid),
            "jku": targets.public.url("/jwks.json"),
            "x5u": targets.public.url("/cert.pem"),
            "kid": kid,
        },
    }


def test_header_supplied_keys_are_ignored(
    token_servers: TokenServers, keys: Keys, targets: Targets
) -> None:
    targets.public.jwks = json.dumps(
        {"keys": [keys.attacker.public_jwk(kid="idp-1"), keys.attacker.public_jwk(kid="k")]}
    )
    fetched_before = len([r for r in targets.public.requests if r in ("/jwks.json", "/cert.pem")])
    forged: dict[str, tuple[Server, str]] = {}
    for server_name, server, sub, kid in (
        ("rs256", token_servers.rs256, token_servers.admin_id, "k"),
        ("jwks", token_servers.jwks, "idp-user-1", "idp-1"),
    ):
        for kind, header in attacker_headers(keys, targets, kid).items():
            token = signed_token(keys.attacker.private, claims(sub, roles=["admin"]), **header)
            forged[f"{server_name}: {kind}"] = (server, token)
        oct_key = {"kty": "oct", "k": b64url(b"attacker-secret-" * 4), "kid": kid}
        forged[f"{server_name}: HS256 with an oct key in the jwk header"] = (
            server,
            hmac_token(b"attacker-secret-" * 4, claims(sub, roles=["admin"]), jwk=oct_key),
        )
    let_in = {k: found for k, (srv, tok) in forged.items() if (found := accepted(srv, tok))}
    time.sleep(0.2)  # a fetch, had one been started, would have arrived by now
    fetched = [r for r in targets.public.requests if r in ("/jwks.json", "/cert.pem")]
    figure(
        "S3",
        f"tokens with attacker keys in jwk/jku/x5u/x5c headers accepted "
        f"{len(let_in)}/{len(forged)}; key URLs fetched by the server "
        f"{len(fetched) - fetched_before}",
    )
    assert not let_in, let_in
    assert len(fetched) == fetched_before, f"the server fetched key material: {fetched}"


def test_jwks_kid_must_name_a_configured_key(jwks_server: Server, keys: Keys) -> None:
    server = jwks_server
    body = claims("idp-user-1", roles=["admin"])
    forged: dict[str, str] = {
        "unknown kid, attacker key": signed_token(keys.attacker.private, body, kid="idp-2"),
        "unknown kid, the IdP's own key": signed_token(keys.idp.private, body, kid="idp-2"),
        "no kid, the IdP's own key": signed_token(keys.idp.private, body),
        "known kid, attacker key": signed_token(keys.attacker.private, body, kid="idp-1"),
        "kid of the EC key, RS256 by the IdP's RSA key": signed_token(
            keys.idp.private, body, kid="ec-1"
        ),
        # a trusted key, but of the other family than the pinned RS256
        "ES256 by the IdP's trusted EC key (kid ec-1)": signed_token(
            keys.idp_ec.private, body, alg="ES256", kid="ec-1"
        ),
        "ES256 signature under an RS256 header (kid ec-1)": signed_token(
            keys.idp_ec.private,
            body,
            alg="ES256",
            raw_header={"alg": "RS256", "typ": "JWT", "kid": "ec-1"},
        ),
        "HS256 keyed with the idp-1 JWK JSON (CVE-2026-48526)": hmac_token(
            json.dumps(keys.idp.public_jwk(kid="idp-1", alg="RS256", use="sig")).encode(),
            body,
            kid="idp-1",
        ),
        "HS256 keyed with the whole JWKS file": hmac_token(
            keys.jwks_text.encode(), body, kid="idp-1"
        ),
        "HS256 keyed with the IdP's public PEM": hmac_token(
            keys.idp.public_pem.encode(), body, kid="idp-1"
        ),
        "alg none, kid idp-1": unsigned_token(body, kid="idp-1"),
    }
    for kid in (
        "../idp-1",
        "idp-1/../idp-1",
        "../../../../../../dev/null",
        "/etc/passwd",
        "..\\..\\idp-1",
        "idp-1\u0000",
        "idp-1 ",
        "IDP-1",
        "*",
        "",
        "file:///etc/passwd",
    ):
        forged[f"kid {kid!r}, attacker key"] = signed_token(keys.attacker.private, body, kid=kid)
        forged[f"kid {kid!r}, the IdP's key"] = signed_token(keys.idp.private, body, kid=kid)
    for kid_value in (1, ["idp-1"], {"kid": "idp-1"}, None, True):
        forged[f"kid of type {type(kid_value).__name__}"] = signed_token(
            keys.idp.private, body, kid=kid_value
        )
    let_in = refuse_all(server, forged)
    figure(
        "S3",
        f"JWKS server: accepted tokens with unknown/path/ill-typed kid or foreign key "
        f"{len(let_in)}/{len(forged)}",
    )
    assert not let_in, let_in


# -- S1/S3: configurations that must not start -------------------------------------------------


@dataclass
class Refusal:
    name: str
    env: dict[str, str]
    message: str
    group: str  # "weak" (S3), "allow-list" (S1) or "mixed" (S1)


@dataclass
class Outcome:
    code: int | None
    output: str
    seconds: float
    answered: bool  # the server came up and served HTTP

    @property
    def tracebacks(self) -> int:
        return self.output.count("Traceback")


def refusal_cases(tmp: Path, keys: Keys) -> list[Refusal]:
    public = tmp / "public.pem"
    private = tmp / "private.pem"
    public.write_text(keys.server.public_pem)
    private.write_text(keys.server.private_pem)
    return [
        Refusal("HS256 secret of 31 bytes", {"CONVEYOR_JWT_SECRET": "s" * 31}, "32 bytes", "weak"),
        Refusal(
            "algorithm none", {"CONVEYOR_JWT_ALGORITHM": "none"}, "jwt_algorithm", "allow-list"
        ),
        Refusal(
            "RS256 keys plus an HMAC secret",
            {
                "CONVEYOR_JWT_ALGORITHM": "RS256",
                "CONVEYOR_JWT_SECRET": "s" * 48,
                "CONVEYOR_JWT_PRIVATE_KEY": f"@{private}",
            },
            "secret",
            "mixed",
        ),
        Refusal(
            "HS256 secret plus a public key",
            {"CONVEYOR_JWT_SECRET": "s" * 48, "CONVEYOR_JWT_PUBLIC_KEY": f"@{public}"},
            "key",
            "mixed",
        ),
    ]


def run_refusal(tmp: Path, refusal: Refusal) -> Outcome:
    port = free_port()
    env = server_env(f"sqlite:///{tmp / (refusal.name.replace(' ', '_') + '.db')}", refusal.env)
    if "CONVEYOR_JWT_SECRET" not in refusal.env:
        env.pop("CONVEYOR_JWT_SECRET", None)
    started = time.monotonic()
    answered = False
    with subprocess.Popen(
        serve_command(port, APP, workers=0),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        deadline = started + 300
        while process.poll() is None and not answered and time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
                answered = True
            except httpx.TransportError:
                time.sleep(0.2)
        if process.poll() is None:
            process.kill()
        output = (process.communicate()[0] or b"").decode(errors="replace")
    return Outcome(process.returncode, output, time.monotonic() - started, answered)


@pytest.fixture(scope="module")
def refusals(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Refusal, Outcome]]:
    """Every bad configuration, started at once (each start imports for seconds)."""
    tmp = tmp_path_factory.mktemp("refusals")
    cases = refusal_cases(tmp, keys)
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        outcomes = list(pool.map(lambda r: run_refusal(tmp, r), cases))
    return list(zip(cases, outcomes, strict=True))


def check_refusals(found: list[tuple[Refusal, Outcome]], group: str) -> list[str]:
    problems = []
    for refusal, outcome in found:
        if refusal.group != group:
            continue
        print(
            f"  {refusal.name}: exit {outcome.code} after {outcome.seconds:.1f}s, "
            f"served HTTP {outcome.answered}, tracebacks {outcome.tracebacks}"
        )
        if outcome.answered or outcome.code in (0, None):
            problems.append(f"{refusal.name}: the server started (exit code {outcome.code})")
        elif refusal.message not in outcome.output:
            problems.append(f"{refusal.name}: no {refusal.message!r} in:\n{outcome.output}")
    return problems


def test_a_weak_or_missing_key_refuses_to_start(refusals: list[tuple[Refusal, Outcome]]) -> None:
    """S3: an HMAC secret under 32 bytes stops the server before it serves anything,
    with the reason in the output."""
    problems = check_refusals(refusals, "weak")
    weak = [(r, o) for r, o in refusals if r.group == "weak"]
    figure(
        "S3",
        f"startup refusals for weak/missing keys {len(weak) - len(problems)}/{len(weak)} "
        f"(exit codes {sorted({o.code for _, o in weak}, key=str)}); the message comes after "
        f"a traceback in {sum(1 for _, o in weak if o.tracebacks)}/{len(weak)} "
        f"(up to {max(len(o.output.splitlines()) for _, o in weak)} lines of output)",
    )
    assert not problems, "\n".join(problems)


def test_an_algorithm_outside_the_allow_list_refuses_to_start(
    refusals: list[tuple[Refusal, Outcome]],
) -> None:
    """S1: the algorithm is one of HS256/RS256/ES256 from configuration, never "none"."""
    problems = check_refusals(refusals, "allow-list")
    figure("S1", f"startup refusal for alg none: {1 - len(problems)}/1")
    assert not problems, "\n".join(problems)


def test_hmac_and_public_key_settings_together_refuse_to_start(
    refusals: list[tuple[Refusal, Outcome]],
) -> None:
    """S1: "never mixing HS and RS" — a server given an HMAC secret and public-key
    material at once must not start with one of them silently ignored
    (``TokenService`` refuses such a mix; the server must not bypass that check)."""
    problems = check_refusals(refusals, "mixed")
    figure("S1", f"startup refusals for HS+RS key settings mixed: {2 - len(problems)}/2")
    assert not problems, "\n".join(problems)
