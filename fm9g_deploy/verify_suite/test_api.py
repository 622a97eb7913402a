"""The API, from the control node through each host's gateway, as a client uses it."""

from __future__ import annotations

import json
import secrets

import pytest

from fm9g_deploy.verify_suite.support import expect, fail, one_line

pytestmark = pytest.mark.journal("gateway", "replicas")

MAX_TOKENS = 16
#: A route vLLM serves but the gateway must not pass on (it is not behind vLLM's key either).
OUTSIDE_ALLOWLIST = "/tokenize"


def _json(response, what: str) -> dict:
    if response.status_code != 200:
        fail(f"{what}: HTTP {response.status_code}: {one_line(response.text, 160)}")
    try:
        return response.json()
    except ValueError:
        fail(f"{what}: the answer is not JSON: {one_line(response.text, 160)}")


def _chat(gateway, facts, messages) -> str:
    body = _json(gateway.post("/v1/chat/completions", json={"model": facts.served_model_name, "messages": messages,
                                                             "max_tokens": MAX_TOKENS}), "chat completion")
    try:
        return body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        fail(f"chat completion: no choices[0].message.content in {one_line(json.dumps(body), 160)}")


def test_models_lists_the_served_name(gateway, facts):
    """/v1/models lists the served name"""
    served = [model.get("id") for model in _json(gateway.get("/v1/models"), "/v1/models").get("data", [])]
    expect(facts.served_model_name in served, f"/v1/models lists {served}, not {facts.served_model_name!r}")


def test_chat_completion_returns_text(gateway, facts):
    """chat completion returns text"""
    text = _chat(gateway, facts, [{"role": "user", "content": "你好，请介绍一下你自己。"}])
    expect(text, "the chat completion came back without text")


def test_streamed_chat_completion_returns_text(gateway, facts):
    """streamed chat completion returns text"""
    request = {"model": facts.served_model_name, "stream": True, "max_tokens": MAX_TOKENS,
               "messages": [{"role": "user", "content": "介绍一下大语言模型的旋转位置编码"}]}
    chunks, text, done = 0, "", False
    with gateway.stream("POST", "/v1/chat/completions", json=request) as response:
        if response.status_code != 200:
            response.read()
            fail(f"streamed chat completion: HTTP {response.status_code}: {one_line(response.text, 160)}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            chunks += 1
            for choice in event.get("choices", []):
                text += (choice.get("delta") or {}).get("content") or ""
    expect(chunks > 1, f"the stream brought {chunks} event(s); a streamed answer comes token by token")
    expect(done, "the stream ended without data: [DONE]")
    expect(text, "the streamed chat completion came back without text")


def test_two_turn_conversation(gateway, facts):
    """two-turn conversation works"""
    messages = [{"role": "user", "content": "你好"}]
    first = _chat(gateway, facts, messages)
    expect(first, "the first turn came back without text")
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "山东最高的山是？"}]
    expect(_chat(gateway, facts, messages), "the second turn (with the first in context) came back without text")


def test_request_without_key_gets_401(gateway):
    """no key gets 401"""
    request = gateway.build_request("GET", "/v1/models")
    del request.headers["Authorization"]
    status = gateway.send(request).status_code
    expect(status == 401, f"/v1/models without a key answered HTTP {status}, not 401")


def test_request_with_a_wrong_key_gets_401(gateway):
    """wrong key gets 401"""
    status = gateway.get("/v1/models", headers={"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}).status_code
    expect(status == 401, f"/v1/models with a wrong key answered HTTP {status}, not 401")


def test_route_outside_the_allowlist_is_refused(gateway):
    """route outside the allowlist refused"""
    response = gateway.post(OUTSIDE_ALLOWLIST, json={"prompt": "hi"})
    expect(response.status_code in (403, 404),
           f"{OUTSIDE_ALLOWLIST} answered HTTP {response.status_code}; the gateway must refuse routes outside "
           "its allowlist")
