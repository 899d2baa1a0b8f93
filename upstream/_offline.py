"""Offline-first checkpoint loading: the given path, then the source's own cache, then (only if online) a download.

The sources' loaders (s3prl's hub, torch.hub under torchaudio's bundles) look in their cache and download
on a miss, with no timeouts of their own. ``load_offline_first`` runs such a loader with the network
blocked for the duration of the call, so a cached checkpoint loads without touching the network and a
missing one is caught at its first request (with the URL it wanted). Only if the network is reachable is
the loader run again, for real, under a socket timeout. Otherwise one ``CheckpointNotFoundError`` says
which model, where it looked, which file or URL it needs and where to put it, within seconds.

The block is a ``sys.addaudithook`` hook (hooks cannot be removed, so it is installed once and does
nothing outside ``network_blocked()`` blocks, on other threads, or for loopback addresses).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Any of these set to 1/true/yes makes every source skip downloads (SSL_BENCH_OFFLINE is this project's;
# the Hugging Face ones are honoured for all sources because people already set them).
OFFLINE_ENV_VARS = ("SSL_BENCH_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


class CheckpointNotFoundError(FileNotFoundError):
    """A model's weights are neither at the given path nor in the source's cache, and cannot be downloaded."""


class NetworkBlockedError(ConnectionError):
    """Raised inside ``network_blocked()`` when code tries to reach the network."""


def missing_checkpoint_message(model: str, looked_in: list[str], needs: str, put_it: str, reason: str) -> str:
    """The one message for a checkpoint that cannot be found: model, where we looked, what is needed, where."""
    looked = "; ".join(looked_in)
    return (
        f"cannot load upstream model {model}: {reason}. Looked in: {looked}. Needs: {needs}. "
        f"To fix: {put_it} (or run where the network is reachable; set SSL_BENCH_OFFLINE=1 to never download)."
    )


_guard = threading.local()
_hook_lock = threading.Lock()
_hook_installed = False


def _is_loopback(host: object) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host)).is_loopback
    except ValueError:
        return False


def _audit_hook(event: str, args: tuple) -> None:
    attempts = getattr(_guard, "attempts", None)
    if attempts is None:
        return
    if event == "urllib.Request":
        attempts.append(str(args[0]))
        raise NetworkBlockedError(f"network access blocked while looking for a cached checkpoint: {args[0]}")
    if event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        attempts.append(f"host {args[0]}")
        raise NetworkBlockedError(f"network access blocked while looking for a cached checkpoint: {args[0]}")
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(f"host {address[0]}")
            raise NetworkBlockedError(
                f"network access blocked while looking for a cached checkpoint: {address}"
            )


@contextlib.contextmanager
def network_blocked() -> Iterator[list[str]]:
    """Within the block (this thread only), any URL request or non-loopback connection raises
    ``NetworkBlockedError``; the yielded list collects what was attempted (URLs first-hand from urllib)."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit_hook)
            _hook_installed = True
    previous = getattr(_guard, "attempts", None)
    attempts: list[str] = []
    _guard.attempts = attempts
    try:
        yield attempts
    finally:
        _guard.attempts = previous


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Default timeout for sockets opened inside the block (urllib and torch.hub use it), then restored."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def offline_flag() -> str | None:
    """The environment variable that declares this process offline, if any."""
    for variable in OFFLINE_ENV_VARS:
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return variable
    return None


def tell_hf_hub_when_offline() -> None:
    """Put huggingface_hub in offline mode when this process is declared offline by any flag.

    huggingface_hub reads only HF_HUB_OFFLINE, once at import; without this, SSL_BENCH_OFFLINE=1 alone still
    lets it look up huggingface.co (its request headers fetch an agent registry even for
    ``local_files_only=True`` loads).
    """
    if offline_flag() is not None:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True


def network_unreachable_reason(url: str) -> str | None:
    """Why ``url`` cannot be downloaded now (an offline flag, or no TCP connection within a few seconds),
    or None if it can. A configured HTTPS proxy is trusted without a probe."""
    flag = offline_flag()
    if flag is not None:
        return f"offline mode ({flag}={os.environ[flag]})"
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None
    parsed = urllib.parse.urlparse(url if "://" in url else f"https://{url}")
    host, port = parsed.hostname or url, parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"no network ({host}:{port} unreachable: {error})")

    # A thread bounds the DNS lookup too, which create_connection's timeout does not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return (
        outcome[0] if outcome else f"no network ({host}:{port} did not answer within {PROBE_TIMEOUT_S:.0f} s)"
    )


def load_offline_first(load: Callable[[], T], on_missing: Callable[[str | None, str], Exception]) -> T:
    """Run ``load`` with the network blocked (a cache hit); on a network attempt, run it again for real if
    the network is reachable, else raise ``on_missing(url_or_none, reason)``."""
    try:
        with network_blocked() as attempts:
            return load()
    except NetworkBlockedError:
        pass
    except Exception:
        # A source may wrap our error in its own; what matters is whether it tried the network.
        if not attempts:
            raise
    url = next((attempt for attempt in attempts if "://" in attempt), None)
    reason = network_unreachable_reason(url or attempts[0].removeprefix("host "))
    if reason is not None:
        raise on_missing(url, reason)
    with socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
        return load()
