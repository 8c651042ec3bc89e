"""bridged.sshtune: the asyncssh speed-ups keep the wire format and apply where checked."""

from __future__ import annotations

import os

import asyncssh
import pytest
from asyncssh.crypto.cipher import GCMCipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridged import sshtune

VERSION = tuple(int(p) for p in asyncssh.__version__.split(".")[:2])


@pytest.fixture(scope="module", autouse=True)
def applied() -> None:
    if VERSION not in sshtune._CHECKED:
        pytest.skip(f"asyncssh {asyncssh.__version__} is not a version the patches were read "
                    "against: they stay off, asyncssh runs as shipped")
    assert sshtune.apply() is True


def _reference(key: bytes, iv: bytes, header: bytes, data: bytes) -> bytes:
    return AESGCM(key).encrypt(iv, data, header)


def test_gcm_packets_are_byte_identical_to_a_fresh_aesgcm_per_packet() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    sender = GCMCipher("aes128-gcm", key, iv)
    receiver = GCMCipher("aes128-gcm", key, iv)
    counter = int.from_bytes(iv[4:], "big")
    for n in range(5):
        header, data = n.to_bytes(4, "big"), os.urandom(1000 + n)
        ciphertext, mac = sender.encrypt_and_sign(header, data)
        this_iv = iv[:4] + ((counter + n) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        assert ciphertext + mac == header + _reference(key, this_iv, header, data)
        assert receiver.verify_and_decrypt(header, ciphertext[4:], mac) == data


def test_a_tampered_packet_is_still_rejected() -> None:
    key, iv = os.urandom(16), os.urandom(12)
    ciphertext, mac = GCMCipher("aes128-gcm", key, iv).encrypt_and_sign(
        b"\0\0\0\1", b"payload")
    tampered = bytes([ciphertext[4] ^ 1]) + ciphertext[5:]
    receiver = GCMCipher("aes128-gcm", key, iv)
    assert receiver.verify_and_decrypt(b"\0\0\0\1", tampered, mac) is None


def test_a_rekeyed_cipher_uses_its_new_key() -> None:
    cipher = GCMCipher("aes128-gcm", os.urandom(16), os.urandom(12))
    cipher.encrypt_and_sign(b"\0\0\0\1", b"x")
    new_key = os.urandom(16)
    cipher._key = new_key  # what a cipher holding another key looks like
    iv = cipher._iv
    ciphertext, mac = cipher.encrypt_and_sign(b"\0\0\0\1", b"y")
    assert ciphertext[4:] + mac == _reference(new_key, iv, b"\0\0\0\1", b"y")
