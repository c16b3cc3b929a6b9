"""The causal-LM path (SmolLM2-135M-Instruct) through the official openai client, unchanged, and through v2."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from tests.serving.conftest import LiveServer, metric_value

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(lm_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lm_server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["smollm2"]
    assert client.models.retrieve("smollm2").id == "smollm2"


def test_chat_completion_answers(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=20, temperature=0)
    answer = r.choices[0].message.content or ""
    assert "Paris" in answer
    assert r.choices[0].finish_reason == "stop"
    assert r.object == "chat.completion"
    assert r.usage is not None
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 20


def test_streamed_chat_equals_the_plain_answer(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) > 2, "the answer did not arrive in pieces"
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == plain.usage.completion_tokens if plain.usage else False


def test_completion_limits_and_stop_strings(client: openai.OpenAI) -> None:
    r = client.completions.create(model="smollm2", prompt="The three primary colors are", max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 8
    full = r.choices[0].text
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    cut = client.completions.create(
        model="smollm2", prompt="The three primary colors are", max_tokens=8, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(stop)]
    streamed = client.completions.create(
        model="smollm2", prompt="The three primary colors are", max_tokens=8, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    two = client.completions.create(model="smollm2", prompt=["Paris is", "Rome is"], max_tokens=4, temperature=0)
    assert [c.index for c in two.choices] == [0, 1]


def test_sampling_with_a_seed_is_repeatable(client: openai.OpenAI) -> None:
    def sample() -> str:
        r = client.completions.create(
            model="smollm2", prompt="Once upon a time", max_tokens=12, temperature=0.9, top_p=0.95, seed=7
        )
        return r.choices[0].text

    assert sample() == sample()


def test_concurrent_chats_are_batched(lm_server: LiveServer, client: openai.OpenAI) -> None:
    before = lm_server.metrics()
    questions = ["What is the capital of France?", "What is the capital of Italy?", "Name a color.", "Say hello."]

    async def ask_all() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{lm_server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        rs = await asyncio.gather(
            *(
                aclient.chat.completions.create(
                    model="smollm2", messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0
                )
                for q in questions
            )
        )
        await aclient.close()
        return [r.choices[0].message.content or "" for r in rs]

    answers = asyncio.run(ask_all())
    after = lm_server.metrics()
    one_at_a_time = [
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0
        )
        .choices[0]
        .message.content
        for q in questions
    ]
    # Left-padded batched generation gives each caller exactly what it would get alone.
    assert answers == one_at_a_time
    assert "Paris" in answers[0]
    calls = metric_value(after, "deepseek_serve_batch_size_count") - metric_value(
        before, "deepseek_serve_batch_size_count"
    )
    assert calls < len(questions), "four concurrent chats ran as four separate generate calls"
    assert metric_value(after, "deepseek_serve_generated_tokens_total") > metric_value(
        before, "deepseek_serve_generated_tokens_total"
    )


def test_openai_errors_are_the_clients_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="n: only n=1"):
        client.chat.completions.create(model="smollm2", messages=QUESTION, n=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="smollm2", messages=[])
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="smollm2", prompt="x", logprobs=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="smollm2", prompt="x", temperature=5)


def test_v2_text_generation(lm_server: LiveServer) -> None:
    body = {
        "parameters": {"max_tokens": 6, "temperature": 0},
        "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["The capital of France is"]}],
    }
    r = httpx.post(f"{lm_server.url}/v2/models/smollm2/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "text_output"
    assert "Paris" in out["data"][0]
    bad = httpx.post(
        f"{lm_server.url}/v2/models/smollm2/infer",
        json={**body, "parameters": {"max_tokens": "many"}},
        timeout=30,
    )
    assert bad.status_code == 400
    assert "parameters.max_tokens" in bad.json()["error"]
