"""End-to-end checks with the official OpenAI and Anthropic Python SDKs.

Run by the `sdk` API test (crates/palisade/tests/api/sdk.rs), which starts a
gateway and a mock provider and passes their coordinates in:

    PALISADE_PROXY   host:port of the proxy listener
    PALISADE_KEY     a valid gateway key

Models: gpt-test (OpenAI kind), claude-test (Anthropic kind), gpt-down and
claude-down (provider unreachable), gpt-slow and claude-slow (first-byte
timeout of 300 ms). The gateway's body limit is 256 KiB.

Every response and every error must be parsed by the SDKs without complaint.
"""

import json
import os
import unittest

import anthropic
import openai

PROXY = os.environ["PALISADE_PROXY"]
KEY = os.environ["PALISADE_KEY"]
REPLY = "Hello from the Palisade demo provider."


def oai(key=KEY):
    return openai.OpenAI(base_url=f"http://{PROXY}/v1", api_key=key, max_retries=0, timeout=20)


def ant(key=KEY):
    return anthropic.Anthropic(base_url=f"http://{PROXY}", api_key=key, max_retries=0, timeout=20)


MESSAGES = [{"role": "user", "content": "Say hello"}]


class OpenAISuccess(unittest.TestCase):
    def test_chat(self):
        r = oai().chat.completions.create(model="gpt-test", messages=MESSAGES)
        self.assertTrue(r.choices[0].message.content.startswith(REPLY))
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.usage.completion_tokens, 12)

    def test_chat_stream_without_usage(self):
        chunks = list(oai().chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertTrue(text.startswith(REPLY), text)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "stop")
        self.assertTrue(all(c.usage is None for c in chunks))

    def test_chat_stream_with_usage(self):
        chunks = list(
            oai().chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)

    def test_completions(self):
        r = oai().completions.create(model="gpt-test", prompt="Say hello")
        self.assertTrue(r.choices[0].text.startswith(REPLY))
        text = "".join(c.choices[0].text for c in oai().completions.create(model="gpt-test", prompt="x", stream=True) if c.choices)
        self.assertTrue(text.startswith(REPLY), text)

    def test_embeddings(self):
        r = oai().embeddings.create(model="gpt-test", input=["one", "two"])
        self.assertEqual(len(r.data), 2)
        self.assertEqual(len(r.data[0].embedding), 8)
        self.assertGreater(r.usage.prompt_tokens, 0)

    def test_responses(self):
        r = oai().responses.create(model="gpt-test", input="Say hello")
        self.assertTrue(r.output_text.startswith(REPLY), r.output_text)
        self.assertEqual(r.usage.output_tokens, 12)

    def test_responses_stream(self):
        events = list(oai().responses.create(model="gpt-test", input="Say hello", stream=True))
        types = [e.type for e in events]
        self.assertEqual(types[0], "response.created")
        self.assertEqual(types[-1], "response.completed")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertTrue(text.startswith(REPLY), text)
        self.assertEqual(events[-1].response.usage.output_tokens, 12)

    def test_models(self):
        ids = [m.id for m in oai().models.list()]
        self.assertIn("gpt-test", ids)
        self.assertIn("claude-test", ids)


class AnthropicSuccess(unittest.TestCase):
    def test_messages(self):
        r = ant().messages.create(model="claude-test", max_tokens=64, messages=MESSAGES)
        self.assertTrue(r.content[0].text.startswith(REPLY))
        self.assertEqual(r.usage.output_tokens, 12)
        self.assertEqual(r.stop_reason, "end_turn")

    def test_messages_stream_helper(self):
        with ant().messages.stream(model="claude-test", max_tokens=64, messages=MESSAGES) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertTrue(text.startswith(REPLY), text)
        self.assertEqual(final.usage.output_tokens, 12)

    def test_messages_stream_raw(self):
        events = list(ant().messages.create(model="claude-test", max_tokens=64, messages=MESSAGES, stream=True))
        self.assertEqual(events[0].type, "message_start")
        self.assertEqual(events[-1].type, "message_stop")

    def test_models(self):
        ids = [m.id for m in ant().models.list()]
        self.assertIn("claude-test", ids)


def raw(client, method, path, body=None, headers=None):
    """A request the SDK cannot make itself (malformed body, no key), sent
    with the SDK's own HTTP client so its error parser reads the answer."""
    return client._client.request(method, f"http://{PROXY}{path}", content=body, headers=headers or {})


class OpenAIErrors(unittest.TestCase):
    def test_unknown_model(self):
        with self.assertRaises(openai.NotFoundError) as cm:
            oai().chat.completions.create(model="no-such-model", messages=MESSAGES)
        self.assertEqual(cm.exception.code, "model_not_found")
        self.assertEqual(cm.exception.param, "model")

    def test_bad_key(self):
        with self.assertRaises(openai.AuthenticationError) as cm:
            oai("pal_dev_000000000000_00000000000000000000000000000000zz").models.list()
        self.assertEqual(cm.exception.code, "invalid_api_key")

    def test_missing_key(self):
        client = oai()
        err = client._make_status_error_from_response(raw(client, "GET", "/v1/models"))
        self.assertIsInstance(err, openai.AuthenticationError)
        self.assertEqual(err.code, "missing_api_key")

    def test_malformed_json(self):
        client = oai()
        resp = raw(client, "POST", "/v1/chat/completions", b'{"model": "gpt-test", "messages": [', {"authorization": f"Bearer {KEY}"})
        err = client._make_status_error_from_response(resp)
        self.assertIsInstance(err, openai.BadRequestError)
        self.assertIn("not valid JSON", err.message)

    def test_body_too_large(self):
        with self.assertRaises(openai.APIStatusError) as cm:
            oai().chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "x" * 300_000}])
        self.assertEqual(cm.exception.status_code, 413)
        self.assertEqual(cm.exception.code, "request_too_large")

    def test_unknown_path_and_method(self):
        with self.assertRaises(openai.NotFoundError):
            oai().get("/no-such-endpoint", cast_to=object)
        with self.assertRaises(openai.APIStatusError) as cm:
            oai().get("/chat/completions", cast_to=object)
        self.assertEqual(cm.exception.status_code, 405)

    def test_upstream_unreachable(self):
        with self.assertRaises(openai.InternalServerError) as cm:
            oai().chat.completions.create(model="gpt-down", messages=MESSAGES)
        self.assertEqual(cm.exception.status_code, 502)
        self.assertEqual(cm.exception.code, "upstream_unreachable")

    def test_upstream_timeout(self):
        with self.assertRaises(openai.InternalServerError) as cm:
            oai().chat.completions.create(
                model="gpt-slow", messages=MESSAGES, extra_headers={"x-mock-delay-ms": "3000"}
            )
        self.assertEqual(cm.exception.status_code, 504)
        self.assertEqual(cm.exception.code, "upstream_timeout")

    def test_upstream_failure_and_rate_limit(self):
        with self.assertRaises(openai.InternalServerError) as cm:
            oai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"x-mock-status": "500"})
        self.assertEqual(cm.exception.status_code, 502)
        with self.assertRaises(openai.RateLimitError):
            oai().chat.completions.create(model="gpt-test", messages=MESSAGES, extra_headers={"x-mock-status": "429"})

    def test_upstream_failure_mid_stream(self):
        stream = oai().chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-fail-after": "3", "x-mock-chunk-delay-ms": "20"},
        )
        seen = []
        with self.assertRaises(openai.APIError) as cm:
            for chunk in stream:
                seen.append(chunk)
        self.assertEqual(len(seen), 3)
        self.assertIn("openai-mock", cm.exception.message)


class AnthropicErrors(unittest.TestCase):
    def test_unknown_model(self):
        with self.assertRaises(anthropic.NotFoundError) as cm:
            ant().messages.create(model="no-such-model", max_tokens=8, messages=MESSAGES)
        self.assertEqual(cm.exception.body["error"]["type"], "not_found_error")

    def test_bad_key(self):
        with self.assertRaises(anthropic.AuthenticationError):
            ant("pal_dev_000000000000_00000000000000000000000000000000zz").messages.create(
                model="claude-test", max_tokens=8, messages=MESSAGES
            )

    def test_malformed_json(self):
        client = ant()
        err = client._make_status_error_from_response(raw(client, "POST", "/v1/messages", b'{"model": ', {"x-api-key": KEY}))
        self.assertIsInstance(err, anthropic.BadRequestError)
        self.assertEqual(err.body["error"]["type"], "invalid_request_error")

    def test_body_too_large(self):
        with self.assertRaises(anthropic.APIStatusError) as cm:
            ant().messages.create(model="claude-test", max_tokens=8, messages=[{"role": "user", "content": "x" * 300_000}])
        self.assertEqual(cm.exception.status_code, 413)
        self.assertEqual(cm.exception.body["error"]["type"], "request_too_large")

    def test_wrong_method(self):
        client = ant()
        err = client._make_status_error_from_response(raw(client, "GET", "/v1/messages", headers={"x-api-key": KEY}))
        self.assertEqual(err.status_code, 405)
        self.assertEqual(err.body["type"], "error")

    def test_upstream_unreachable_and_timeout(self):
        with self.assertRaises(anthropic.InternalServerError) as cm:
            ant().messages.create(model="claude-down", max_tokens=8, messages=MESSAGES)
        self.assertEqual(cm.exception.status_code, 502)
        with self.assertRaises(anthropic.InternalServerError) as cm:
            ant().messages.create(
                model="claude-slow", max_tokens=8, messages=MESSAGES, extra_headers={"x-mock-delay-ms": "3000"}
            )
        self.assertEqual(cm.exception.status_code, 504)

    def test_upstream_failure_mid_stream(self):
        stream = ant().messages.create(
            model="claude-test",
            max_tokens=64,
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-mock-fail-after": "4", "x-mock-chunk-delay-ms": "20"},
        )
        seen = []
        with self.assertRaises(anthropic.APIError) as cm:
            for event in stream:
                seen.append(event.type)
        self.assertEqual(seen[0], "message_start")
        self.assertIn("anthropic-mock", str(cm.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
