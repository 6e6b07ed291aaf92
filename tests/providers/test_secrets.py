"""The secrets box: key settings, the generated development key, rotation between keys."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from app.core.secrets import KEY_FILE, InvalidSecretsKey, SecretBox, SecretUnreadable, parse_keys
from app.core.settings import DatabaseSettings, Settings, problems
from app.main import create_app
from tests.conftest import ADMIN_TOKEN


def _box(*keys: str) -> SecretBox:
    return SecretBox(parse_keys(",".join(keys)))


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    written_before = _box(old).encrypt("sk_test_abc")
    both = _box(new, old)
    assert both.decrypt(written_before) == "sk_test_abc"
    written_now = both.encrypt("sk_test_def")
    assert _box(new).decrypt(written_now) == "sk_test_def"
    with pytest.raises(SecretUnreadable):
        _box(old).decrypt(written_now)
    assert _box(new).decrypt(both.rotate(written_before)) == "sk_test_abc"


def test_ciphertexts_differ_from_the_plaintext_and_from_each_other() -> None:
    box = _box(Fernet.generate_key().decode())
    first, second = box.encrypt("whsec_same"), box.encrypt("whsec_same")
    assert "whsec_same" not in first
    assert first != second


def test_an_altered_ciphertext_is_refused() -> None:
    box = _box(Fernet.generate_key().decode())
    token = box.encrypt("whsec_x")
    with pytest.raises(SecretUnreadable):
        box.decrypt(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


@pytest.mark.parametrize(
    "value", ["not-a-key", "", " , ", Fernet.generate_key().decode() + ",short"]
)
def test_an_invalid_key_setting_is_one_line_naming_it_without_the_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CREDITD_PAYMENTS__SECRETS_KEY", value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    [line] = problems(raised.value)
    assert line.startswith("CREDITD_PAYMENTS__SECRETS_KEY: ")
    for piece in value.split(","):
        if piece.strip():
            assert piece.strip() not in line


def test_several_keys_are_a_valid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [Fernet.generate_key().decode() for _ in range(3)]
    monkeypatch.setenv("CREDITD_PAYMENTS__SECRETS_KEY", " , ".join(keys) + ",")
    settings = Settings()
    token = SecretBox.from_settings(settings).encrypt("x")
    assert _box(keys[0]).decrypt(token) == "x"


def test_production_requires_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITD_PAYMENTS__SECRETS_KEY", raising=False)
    with pytest.raises(ValidationError) as raised:
        Settings(env="production", admin_token="a" * 32, DATABASE_URL="postgresql://h/db")
    assert problems(raised.value) == [
        "CREDITD_PAYMENTS__SECRETS_KEY: is required in production (comma-separated Fernet keys;"
        " the first encrypts)"
    ]


def test_a_development_key_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(env="development", data_dir=tmp_path / "data")
    token = SecretBox.from_settings(settings).encrypt("sk_test_abc")
    key_file = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox.from_settings(settings).decrypt(token) == "sk_test_abc"
    assert [p.name for p in (tmp_path / "data").iterdir()] == [KEY_FILE]  # no temporary left


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    settings = Settings(env="development", data_dir=tmp_path)
    barrier = threading.Barrier(8)
    boxes: list[SecretBox] = []

    def build() -> None:
        barrier.wait()
        boxes.append(SecretBox.from_settings(settings))

    threads = [threading.Thread(target=build) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    token = boxes[0].encrypt("x")
    assert all(box.decrypt(token) == "x" for box in boxes)
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE]


def test_a_corrupt_development_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("garbage\n")
    with pytest.raises(InvalidSecretsKey, match=KEY_FILE):
        SecretBox.from_settings(Settings(env="development", data_dir=tmp_path))


async def test_an_app_that_never_touches_a_provider_writes_no_key(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        env="test",
        data_dir=tmp_path,
        admin_token=ADMIN_TOKEN,
        database=DatabaseSettings(url=database_url, pool_size=2),
    )
    app = create_app(settings)
    app.openapi()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
            assert not (tmp_path / KEY_FILE).exists()
            r = await client.put(
                "/v1/providers/stripe",
                json={"secret_key": "sk_test_0123456789", "webhook_secret": "whsec_0123456789"},
                headers={"Authorization": "Bearer nope"},
            )
            assert r.status_code == 401
            assert not (tmp_path / KEY_FILE).exists()
