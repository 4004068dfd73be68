"""Shared fixtures: an isolated database per test, and a tiny randomly initialised Llama saved as a local
model folder (with a byte-level tokenizer and a chat template) so the whole pipeline runs in seconds."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["LAB_WORKER_AUTOSTART"] = "0"  # pages under AppTest must not spawn workers; tests start their own
# compiled decode's kernels: one cache for the whole session (tests that move LAB_DATA_DIR would compile again)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / "data" / "cache" / "inductor"))

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


DATABASES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """A test marked `both_databases` runs once on SQLite and once on a real PostgreSQL server."""
    if metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("database", DATABASES, indirect=True)


@pytest.fixture
def database(request) -> str:
    """Which store the test runs on: SQLite unless the test is marked `both_databases`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole session, started only when a test asks for it (tests/postgres_server.py)."""
    from lab import store
    from tests.postgres_server import PostgresServer
    server = PostgresServer().start()
    try:
        server.migrate_template(store._migrate)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def isolated_db(database, tmp_path, monkeypatch, request):
    """Every test gets its own store: a SQLite file, or a fresh PostgreSQL database; nothing touches data/lab.db.
    Yields the SQLite file's path, or the PostgreSQL URL."""
    from lab import store
    server = request.getfixturevalue("postgres_server") if database == "postgresql" else None
    where = server.new_database() if server else tmp_path / "lab.db"
    monkeypatch.setenv("LAB_DATABASE_URL", where if server else f"sqlite:///{where}")
    store.reset_engines()
    yield where
    store.reset_engines()
    if server:
        server.drop_database(where)


@pytest.fixture
def data_in_tmp(tmp_path, monkeypatch):
    """LAB_DATA_DIR in a temp folder: calibrations (data/cache/quant, magcache) never land in the checkout."""
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def tiny_llama_and_tokenizer():
    """The tiny random Llama and the byte tokenizer, shared by a test module (tests never change them)."""
    return build_tiny_llama().eval(), build_byte_tokenizer()


def build_tiny_llama(seed: int = 0, layers: int = 2, tied: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=256, eos_token_id=257, pad_token_id=257, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


def build_byte_tokenizer():
    """A byte-level tokenizer: ids 0-255 are bytes, 256 <s>, 257 </s>, 258-259 spare."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    vocab.update({"<s>": 256, "</s>": 257, "<unk>": 258, "<pad>": 259})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama().save_pretrained(folder)
    build_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_spec(tiny_model_dir) -> dict:
    return {"name": "tiny", "model": str(tiny_model_dir), "workload": "chat", "prompts": 2, "max_new_tokens": 8,
            "repeats": 2, "warmup": 1, "perplexity_tokens": 64, "perplexity_window": 32, "threads": 1,
            "variants": [{"name": "bf16", "techniques": [{"name": "weight_dtype", "dtype": "bf16"}]}]}
