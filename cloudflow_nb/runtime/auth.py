"""The handshake that opens a fast-path connection: both ends prove they hold the worker's secret.

Sans-I/O (bytes in, bytes out), one object per side. Three fixed-size messages, nothing else:

1. server to client, :data:`HELLO` bytes: :data:`MAGIC` and a fresh 32-byte server nonce ``sn``;
2. client to server, :data:`ANSWER` bytes: a fresh client nonce ``cn`` and
   ``HMAC-SHA256(secret, b"client" + MAGIC + sn + cn)``;
3. server to client, :data:`PROOF` bytes: ``HMAC-SHA256(secret, b"server" + MAGIC + cn + sn)``.

Fresh nonces on both sides make a recorded answer or proof useless on another connection (replay);
the role label in each MAC makes a server's proof worthless as a client's answer and the other way
round (reflection). Each side accepts exactly these sizes and compares MACs with
:func:`hmac.compare_digest`; any other byte, a wrong MAC or an early close raises :class:`AuthError`.
Frames (pickles) flow only after the handshake, so nothing is unpickled from a peer that has not
proved it holds the secret, in either direction. The MAC is computed once per connection, never
per call.

Examples
--------
>>> secret = new_secret()
>>> server, client = ServerHandshake(secret), ClientHandshake(secret)
>>> proof = server.feed(client.feed(server.hello))
>>> client.feed(proof), server.done, client.done
(b'', True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["ANSWER", "HELLO", "MAGIC", "PROOF", "AuthError", "ClientHandshake", "ServerHandshake", "new_secret"]

MAGIC = b"cfnb-fp1"  # protocol name and version
NONCE = 32
MAC = hashlib.sha256().digest_size
HELLO = len(MAGIC) + NONCE
ANSWER = NONCE + MAC
PROOF = MAC


class AuthError(ConnectionError):
    """The peer did not prove it holds the secret (wrong MAC, wrong bytes, or too many of them)."""


def new_secret() -> bytes:
    """A fresh random 32-byte secret."""
    return secrets.token_bytes(32)


def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, role + MAGIC + first + second, hashlib.sha256).digest()


class ServerHandshake:
    """The accepting side: send :attr:`hello`, :meth:`feed` what arrives, send what it returns.

    Parameters
    ----------
    secret : bytes
        The secret a client must prove it holds.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._nonce = secrets.token_bytes(NONCE)
        self._buffer = b""
        self.done = False

    @property
    def hello(self) -> bytes:
        """The first message: magic and this connection's nonce."""
        return MAGIC + self._nonce

    def feed(self, data: bytes) -> bytes:
        """Add received bytes; the proof to send once the client's answer is complete and right
        (``b""`` while it is incomplete). Raises :class:`AuthError`."""
        if self.done or len(self._buffer) + len(data) > ANSWER:
            raise AuthError("handshake: more bytes than an answer")
        self._buffer += data
        if len(self._buffer) < ANSWER:
            return b""
        peer_nonce, mac = self._buffer[:NONCE], self._buffer[NONCE:]
        if not hmac.compare_digest(mac, _mac(self._secret, b"client", self._nonce, peer_nonce)):
            raise AuthError("handshake: the client's answer does not match the secret")
        self.done = True
        return _mac(self._secret, b"server", peer_nonce, self._nonce)


class ClientHandshake:
    """The connecting side: :meth:`feed` what arrives, send what it returns, until :attr:`done`.

    Parameters
    ----------
    secret : bytes
        The secret both ends hold.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._nonce = secrets.token_bytes(NONCE)
        self._buffer = b""
        self._expected = b""  # the server's proof, once the answer is sent
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Add received bytes; the answer to send once the server's hello is complete (``b""``
        otherwise). :attr:`done` turns true when the server's proof checks out. Raises
        :class:`AuthError`."""
        if self.done or len(self._buffer) + len(data) > HELLO + PROOF:
            raise AuthError("handshake: more bytes than a hello and a proof")
        self._buffer += data
        if not self._expected and len(self._buffer) >= HELLO:
            if not self._buffer.startswith(MAGIC):
                raise AuthError("handshake: the server does not speak this protocol")
            if len(self._buffer) > HELLO:
                raise AuthError("handshake: the server sent its proof before the answer")
            server_nonce = self._buffer[len(MAGIC) : HELLO]
            self._expected = _mac(self._secret, b"server", self._nonce, server_nonce)
            return self._nonce + _mac(self._secret, b"client", server_nonce, self._nonce)
        if len(self._buffer) == HELLO + PROOF:
            if not hmac.compare_digest(self._buffer[HELLO:], self._expected):
                raise AuthError("handshake: the server's proof does not match the secret")
            self.done = True
        return b""
