"""OIDC bearer tokens: a JWT signed by the configured issuer (Keycloak, AD FS, Entra ID…), checked
against its JWKS, its issuer, its audience and its lifetime; the caller's roles come from a claim
listing ``<project>:<role>`` grants (``oncology:researcher``).

The JWKS is fetched on first use and again when a token names a key id it does not hold (the
issuer rotated its keys), at most once per :data:`REFRESH_MIN_S`, so forged key ids cannot make the
service hammer the issuer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

import httpx

from medsynth.auth.principal import Principal, Role
from medsynth.core.errors import Unauthorized

log = logging.getLogger(__name__)

REFRESH_MIN_S = 60.0


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, jwks_url: str, *, roles_claim: str = "roles",
                 algorithms: Collection[str] = ("RS256", "PS256", "ES256"), leeway_s: float = 30.0) -> None:
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.roles_claim, self.algorithms, self.leeway_s = roles_claim, list(algorithms), int(leeway_s)
        self._keys = None
        self._fetched_at = -REFRESH_MIN_S
        self._lock = threading.Lock()

    def verify(self, token: str) -> Principal:
        """The caller ``token`` proves, or :class:`Unauthorized` saying what is wrong with it."""
        from joserfc import errors, jwt

        try:
            decoded = self._decode(token)
            jwt.JWTClaimsRegistry(
                leeway=self.leeway_s,
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.audience},
                exp={"essential": True},
                sub={"essential": True},
            ).validate(decoded.claims)
        except errors.ExpiredTokenError:
            raise Unauthorized("the bearer token has expired") from None
        except errors.InvalidClaimError as exc:
            raise Unauthorized(f"the bearer token's {exc.claim} claim is not accepted here "
                               f"(issuer {self.issuer}, audience {self.audience})") from None
        except errors.MissingClaimError as exc:
            raise Unauthorized(f"the bearer token lacks the {exc.claim} claim") from None
        except errors.InvalidKeyIdError:
            raise Unauthorized("the bearer token is signed with a key the issuer does not publish") from None
        except errors.BadSignatureError:
            raise Unauthorized("the bearer token's signature does not verify") from None
        except errors.UnsupportedAlgorithmError:
            raise Unauthorized(f"the bearer token's algorithm is not one of {', '.join(self.algorithms)}") from None
        except errors.JoseError as exc:
            raise Unauthorized(f"the bearer token cannot be read ({exc.error})") from None
        except ValueError:
            raise Unauthorized("the bearer token cannot be read") from None
        claims = decoded.claims
        who = claims.get("preferred_username") or claims.get("email") or claims["sub"]
        return Principal(actor=f"oidc:{who}", grants=self._grants(claims))

    def _decode(self, token: str):
        from joserfc import errors, jwt

        keys = self._key_set(refresh=False)
        try:
            return jwt.decode(token, keys, algorithms=self.algorithms)
        except errors.InvalidKeyIdError:
            fresh = self._key_set(refresh=True)
            if fresh is keys:
                raise
            return jwt.decode(token, fresh, algorithms=self.algorithms)

    def _key_set(self, *, refresh: bool):
        from joserfc.jwk import KeySet

        with self._lock:
            due = self._keys is None or refresh
            if due and time.monotonic() - self._fetched_at >= REFRESH_MIN_S:
                self._fetched_at = time.monotonic()
                try:
                    response = httpx.get(self.jwks_url, timeout=5.0)
                    response.raise_for_status()
                    self._keys = KeySet.import_key_set(response.json())
                except (httpx.HTTPError, ValueError) as exc:
                    log.error("fetching the OIDC JWKS from %s failed: %s", self.jwks_url, exc)
                    if self._keys is None:
                        raise Unauthorized("the identity provider's signing keys cannot be fetched now") from None
            if self._keys is None:
                raise Unauthorized("the identity provider's signing keys cannot be fetched now")
            return self._keys

    def _grants(self, claims: dict[str, Any]) -> dict[str, frozenset[Role]]:
        value: Any = claims
        for part in self.roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        grants: dict[str, set[Role]] = {}
        for item in value if isinstance(value, list) else []:
            project, sep, role = str(item).partition(":")
            if sep and role in Role._value2member_map_:
                grants.setdefault(project, set()).add(Role(role))
        return {project: frozenset(roles) for project, roles in grants.items()}
