"""The token store interface: what the token manager and every command need from a store.

Two implementations: the encrypted file (relay.tokens.store, one relay host) and Redis/Valkey
(relay.tokens.redis_store, several replicas sharing one grant). Records carry a per-account
version that grows with every write (a deleted account keeps its version), so a writer can say
"replace only what I read" (compare-and-set) and an older writer never overwrites newer tokens.

Reads must never block the event loop: implementations answer from memory (a snapshot swapped
atomically) and do their I/O in a worker thread or on the network, off the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relay.errors import TokenStoreError
from relay.tokens.model import TokenSet


@dataclass(frozen=True)
class StoredTokens:
    """An account's tokens with the version they were stored under (0 = never stored)."""

    tokens: TokenSet | None
    version: int


class VersionConflict(TokenStoreError):
    """A compare-and-set found another version than expected: someone wrote newer tokens."""

    def __init__(self, account: str, expected: int, current: StoredTokens) -> None:
        self.account = account
        self.expected = expected
        self.current = current
        super().__init__(f"the tokens of account '{account}' changed in the store meanwhile "
                         f"(version {current.version}, expected {expected}); the newer ones are kept")


@runtime_checkable
class Lease(Protocol):
    """A held right to refresh one account's tokens (see TokenStore.try_lease)."""

    @property
    def held(self) -> bool:
        """False once released, or known to be expired."""
        ...

    async def release(self) -> None:
        """Give the lease up (only if it is still ours; never raises for a lost lease)."""
        ...


class TokenStore(Protocol):
    """Where TokenSets live. ``describe`` names the setting(s) an operator would look at."""

    @property
    def describe(self) -> str:
        """A short operator-facing name, e.g. ``token_store.path /var/lib/relay/tokens.enc``."""
        ...

    async def get(self, account: str, *, fresh: bool = False) -> TokenSet | None:
        """Return the account's tokens from memory; ``fresh`` re-reads the backing store first."""
        ...

    async def get_versioned(self, account: str, *, fresh: bool = False) -> StoredTokens:
        """Like get, with the version (0 and tokens None when the account has none)."""
        ...

    async def put(self, tokens: TokenSet) -> int:
        """Store (replace) the account's tokens durably; return the new version."""
        ...

    async def compare_and_set(self, tokens: TokenSet, expected_version: int) -> int:
        """Store ``tokens`` only if the stored version is ``expected_version``; else VersionConflict."""
        ...

    async def delete(self, account: str) -> bool:
        """Forget the account's tokens; True if there were any."""
        ...

    async def list_accounts(self) -> list[str]:
        """Return the sorted names of the accounts with stored tokens (re-read)."""
        ...

    async def load_all(self) -> dict[str, TokenSet]:
        """Return every stored TokenSet by account name (re-read)."""
        ...

    async def watch(self, account: str, after_version: int, timeout_s: float) -> StoredTokens | None:
        """Wait until the account's version differs from ``after_version`` (or, for a shared store,
        the refresh lease was released); None after ``timeout_s``."""
        ...

    async def try_lease(self, account: str, ttl_s: float) -> Lease | None:
        """Take the right to refresh ``account`` for ``ttl_s``; None while another holder has it."""
        ...

    async def close(self) -> None:
        """Release connections and background work."""
        ...


class LocalLease:
    """A lease for stores used by one process: the token manager's in-process single flight is
    the whole exclusion, so the lease is always granted."""

    def __init__(self) -> None:
        self._held = True

    @property
    def held(self) -> bool:
        """True until released."""
        return self._held

    async def release(self) -> None:
        """Mark the lease released."""
        self._held = False
