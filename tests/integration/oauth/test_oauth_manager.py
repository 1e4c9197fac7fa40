"""TokenManager against the sandbox OAuth server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from relay.errors import AuthorizationNeeded, TokenRefreshFailed, TokenStoreError
from relay.sandbox.oauth import SandboxOAuthProvider
from relay.sandbox.oauth_jwt import generate_rsa_key_pem
from relay.secret import Secret
from relay.tokens.manager import TokenManager
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore

from .conftest import MAILBOX, FakeClock, make_config


async def no_sleep(_: float) -> None:
    """Backoff sleep replacement: returns at once (keeps tests fast)."""


def seed(sandbox: SandboxOAuthProvider, clock: FakeClock, *, expires_in_s: float) -> TokenSet:
    """A stored TokenSet with a real sandbox refresh token and an access token expiring soon."""
    return TokenSet(account="sales", credentials="sandbox",
                    access_token=Secret(sandbox.issue_access_token(MAILBOX)),
                    expires_at=clock() + timedelta(seconds=expires_in_s),
                    refresh_token=Secret(sandbox.issue_refresh_token(MAILBOX)), obtained_at=clock())


@pytest.fixture
def clock() -> FakeClock:
    """An injectable clock."""
    return FakeClock()


async def manager_for(sandbox: SandboxOAuthProvider, tmp_path: Path, store: EncryptedFileStore,
                      clock: FakeClock, **kwargs: object) -> TokenManager:
    """A TokenManager for the sandbox config with fast backoff."""
    config = make_config(sandbox, tmp_path, **kwargs)  # type: ignore[arg-type]
    return TokenManager(config, store, clock=clock, sleep=no_sleep)


async def test_valid_token_is_served_from_cache_without_request(sandbox, tmp_path, store, clock):
    """A token with more than the margin left is returned without contacting the provider."""
    seeded = seed(sandbox, clock, expires_in_s=3600)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        assert await manager.get_token("sales") == seeded.access_token
        assert sandbox.counters.get("token_requests", 0) == 0
    finally:
        await manager.close()


async def test_refreshes_when_less_than_margin_remains(sandbox, tmp_path, store, clock):
    """Once the clock passes expiry minus the margin, get_token refreshes and stores the new token."""
    seeded = seed(sandbox, clock, expires_in_s=3600)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        clock.advance(3600 - 299)
        token = await manager.get_token("sales")
        assert token != seeded.access_token
        assert sandbox.token_allows(token.reveal(), MAILBOX)
        assert sandbox.counters["refresh_requests"] == 1
        stored = await store.get("sales")
        assert stored is not None and stored.access_token == token
        assert stored.expires_at == clock() + timedelta(seconds=3600)
    finally:
        await manager.close()


async def test_500_concurrent_callers_share_one_refresh(sandbox, tmp_path, store, clock):
    """500 concurrent get_token calls with an expired token cause exactly one token request."""
    await store.put(seed(sandbox, clock, expires_in_s=-10))
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        tokens = await asyncio.gather(*(manager.get_token("sales") for _ in range(500)))
        assert len({t.reveal() for t in tokens}) == 1
        assert sandbox.counters["token_requests"] == 1
    finally:
        await manager.close()


async def test_rotated_refresh_token_is_persisted_before_use(sandbox, tmp_path, store, clock, key):
    """With rotation on, the new refresh token is in the store file when get_token returns."""
    sandbox.rotate_refresh_tokens = True
    seeded = seed(sandbox, clock, expires_in_s=-1)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        await manager.get_token("sales")
        on_disk = await EncryptedFileStore(store.path, key).open().get("sales")
        assert on_disk is not None and on_disk.refresh_token is not None
        assert on_disk.refresh_token != seeded.refresh_token
        # the old one is dead at the provider; the stored one works for the next refresh
        clock.advance(3600)
        await manager.get_token("sales")
        assert sandbox.counters["refresh_requests"] == 2
        assert sandbox.counters.get("token_errors", 0) == 0
    finally:
        await manager.close()


class FailingPutStore(EncryptedFileStore):
    """A real file store whose writes fail on demand (a full disk, a read-only mount)."""

    fail = False

    async def put(self, tokens: TokenSet) -> int:
        self._maybe_fail()
        return await super().put(tokens)

    async def compare_and_set(self, tokens: TokenSet, expected_version: int) -> int:
        self._maybe_fail()
        return await super().compare_and_set(tokens, expected_version)

    def _maybe_fail(self) -> None:
        if self.fail:
            raise TokenStoreError(f"cannot write the token store {self.path}: No space left on device; "
                                  "the old file is unchanged")


async def test_failed_persist_keeps_rotated_tokens_in_memory_and_saves_later(sandbox, tmp_path, clock, key):
    """If rotated tokens cannot be persisted, the old file stays intact, the new tokens are used from
    memory (the old refresh token is already revoked) and saved at the next refresh check."""
    sandbox.rotate_refresh_tokens = True
    failing = FailingPutStore(tmp_path / "store" / "tokens.enc", key).open()
    seeded = seed(sandbox, clock, expires_in_s=-1)
    await failing.put(seeded)
    before = failing.path.read_bytes()
    manager = await manager_for(sandbox, tmp_path, failing, clock)
    failing.fail = True
    try:
        token = await manager.get_token("sales")
        assert failing.path.read_bytes() == before
        assert await manager.get_token("sales") == token
        assert sandbox.counters["refresh_requests"] == 1
        failing.fail = False
        await manager.refresh_due()
        saved = await failing.get("sales")
        assert saved is not None and saved.access_token == token
        assert saved.refresh_token != seeded.refresh_token
    finally:
        await manager.close()


async def test_invalid_grant_marks_account_and_logs_once(sandbox, tmp_path, store, clock, caplog):
    """invalid_grant marks the account in memory and store, logs one ERROR, and later calls fail fast."""
    sandbox.force_invalid_grant = True
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        with caplog.at_level(logging.ERROR, logger="relay.tokens"):
            for _ in range(3):
                with pytest.raises(AuthorizationNeeded, match="relay authorize sales"):
                    await manager.get_token("sales")
        assert sandbox.counters["refresh_requests"] == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "relay authorize sales" in errors[0].getMessage()
        stored = await store.get("sales")
        assert stored is not None and stored.needs_authorization
        (status,) = await manager.status()
        assert status.state == "needs authorize"
    finally:
        await manager.close()


async def test_new_authorization_from_another_process_is_picked_up(sandbox, tmp_path, store, clock, key):
    """After a marked account is re-authorized by a separate store writer, get_token works again."""
    sandbox.force_invalid_grant = True
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        with pytest.raises(AuthorizationNeeded):
            await manager.get_token("sales")
        sandbox.force_invalid_grant = False
        clock.advance(5)
        fresh = seed(sandbox, clock, expires_in_s=3600)
        await EncryptedFileStore(store.path, key).open().put(fresh)  # like `relay authorize`
        assert await manager.get_token("sales") == fresh.access_token
    finally:
        await manager.close()


async def test_5xx_is_retried_with_backoff_then_succeeds(sandbox, tmp_path, store, clock):
    """Two HTTP 503 answers are retried with growing delays; the third attempt succeeds."""
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    delays: list[float] = []

    async def record(delay_s: float) -> None:
        delays.append(delay_s)

    config = make_config(sandbox, tmp_path)
    manager = TokenManager(config, store, clock=clock, sleep=record, retry_base_delay_s=1.0)
    sandbox.fail_next(2, status=503)
    try:
        await manager.get_token("sales")
        assert sandbox.counters["token_requests"] == 3
        assert len(delays) == 2
        assert 0.5 <= delays[0] <= 1.5 and 1.0 <= delays[1] <= 3.0
    finally:
        await manager.close()


async def test_persistent_5xx_ends_in_token_refresh_failed(sandbox, tmp_path, store, clock):
    """When every attempt gets HTTP 500, get_token raises TokenRefreshFailed after 3 attempts."""
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    manager = await manager_for(sandbox, tmp_path, store, clock)
    sandbox.fail_next(10, status=500)
    try:
        with pytest.raises(TokenRefreshFailed, match="HTTP 500"):
            await manager.get_token("sales")
        assert sandbox.counters["token_requests"] == 3
        (status,) = await manager.status()
        assert "HTTP 500" in (status.last_error or "")
    finally:
        await manager.close()


async def test_invalid_json_is_transient(sandbox, tmp_path, store, clock):
    """A 200 answer that is not JSON is retried like a transient failure."""
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    manager = await manager_for(sandbox, tmp_path, store, clock)
    sandbox.invalid_json_next(1)
    try:
        await manager.get_token("sales")
        assert sandbox.counters["token_requests"] == 2
    finally:
        await manager.close()


async def test_timeout_ends_in_token_refresh_failed(sandbox, tmp_path, store, clock):
    """A hanging token endpoint causes a bounded number of timed-out attempts, then TokenRefreshFailed."""
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    config = make_config(sandbox, tmp_path)
    http = httpx.AsyncClient(timeout=httpx.Timeout(0.3))
    manager = TokenManager(config, store, http=http, clock=clock, sleep=no_sleep, retry_attempts=2)
    sandbox.hang_token_endpoint = True
    try:
        with pytest.raises(TokenRefreshFailed, match="timed out"):
            await manager.get_token("sales")
        assert sandbox.counters["token_requests"] == 2
    finally:
        sandbox.hang_token_endpoint = False
        await manager.close()
        await http.aclose()


async def test_refresh_failure_keeps_serving_unexpired_token(sandbox, tmp_path, store, clock):
    """Inside the margin but before expiry, a failed refresh still returns the current token."""
    seeded = seed(sandbox, clock, expires_in_s=120)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    sandbox.fail_next(10, status=502)
    try:
        assert await manager.get_token("sales") == seeded.access_token
    finally:
        await manager.close()


async def test_force_refresh_gets_new_token_once_for_a_burst(sandbox, tmp_path, store, clock):
    """force_refresh replaces a valid-looking token; a burst of force calls makes one request."""
    seeded = seed(sandbox, clock, expires_in_s=3600)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        clock.advance(60)
        tokens = await asyncio.gather(*(manager.force_refresh("sales") for _ in range(50)))
        assert {t.reveal() for t in tokens} == {tokens[0].reveal()}
        assert tokens[0] != seeded.access_token
        assert sandbox.counters["refresh_requests"] == 1
    finally:
        await manager.close()


async def test_never_authorized_account_needs_authorize(sandbox, tmp_path, store, clock):
    """An authorization_code account without stored tokens raises AuthorizationNeeded naming the fix."""
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        with pytest.raises(AuthorizationNeeded, match="relay authorize sales"):
            await manager.get_token("sales")
        (status,) = await manager.status()
        assert status.state == "not authorized"
    finally:
        await manager.close()


async def test_client_credentials_fetch_on_demand(sandbox, tmp_path, store, clock):
    """client_credentials needs no authorize step: the first get_token fetches an app-only token."""
    manager = await manager_for(sandbox, tmp_path, store, clock, flow="client_credentials")
    try:
        token = await manager.get_token("sales")
        assert sandbox.token_allows(token.reveal(), MAILBOX)
        assert await manager.get_token("sales") == token
        assert sandbox.counters["client_credentials_requests"] == 1
        clock.advance(3600)
        assert await manager.get_token("sales") != token
    finally:
        await manager.close()


async def test_service_account_jwt_grant(sandbox, tmp_path, store, clock):
    """A service-account account gets a token for its mailbox through the RS256 JWT bearer grant."""
    import json
    private_pem, public_pem = generate_rsa_key_pem()
    sandbox.register_service_account("relay@project.iam.test", public_pem)
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({"client_email": "relay@project.iam.test",
                                    "private_key": private_pem.decode(), "token_uri": sandbox.token_url}))
    manager = await manager_for(sandbox, tmp_path, store, clock, flow="service_account",
                                service_account_file=key_file, secret=None)
    try:
        token = await manager.get_token("sales")
        assert sandbox.validate_access_token(token.reveal()) == MAILBOX
        assert sandbox.counters["jwt_bearer_requests"] == 1
    finally:
        await manager.close()


async def test_background_pass_refreshes_ahead_of_expiry(sandbox, tmp_path, store, clock):
    """refresh_due refreshes a token nearing expiry so sessions do not wait; start/close are clean."""
    seeded = seed(sandbox, clock, expires_in_s=500)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    await manager.start()
    try:
        assert await manager.refresh_due() == ["sales"]
        stored = await store.get("sales")
        assert stored is not None and stored.access_token != seeded.access_token
        assert await manager.refresh_due() == []
    finally:
        await manager.close()


async def test_wrong_client_secret_is_reported_with_setting(sandbox, tmp_path, store, clock):
    """A rejected client secret surfaces as AuthorizationNeeded naming credentials.NAME.client_secret."""
    await store.put(seed(sandbox, clock, expires_in_s=-1))
    manager = await manager_for(sandbox, tmp_path, store, clock, secret="wrong")
    try:
        with pytest.raises(AuthorizationNeeded, match=r"credentials\.sandbox\.client_id"):
            await manager.get_token("sales")
    finally:
        await manager.close()


async def test_force_refresh_replaces_a_fresh_token_the_upstream_rejected(sandbox, tmp_path, store, clock):
    """A token refreshed seconds ago but rejected upstream (revoked) is replaced, once per burst."""
    seeded = seed(sandbox, clock, expires_in_s=3600)
    await store.put(seeded)
    manager = await manager_for(sandbox, tmp_path, store, clock)
    try:
        clock.advance(60)
        fresh = await manager.force_refresh("sales")
        clock.advance(1)  # the upstream refuses the fresh token at once
        burst = await asyncio.gather(*(manager.force_refresh("sales", rejected=fresh) for _ in range(20)))
        assert {t.reveal() for t in burst} == {burst[0].reveal()}
        assert burst[0] != fresh
        assert sandbox.counters["refresh_requests"] == 2
        # A caller still holding the first, long-replaced token gets the current one without a request.
        assert await manager.force_refresh("sales", rejected=seeded.access_token) == burst[0]
        assert sandbox.counters["refresh_requests"] == 2
    finally:
        await manager.close()
