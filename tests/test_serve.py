"""The server: batched decoding gives what one-at-a-time generation gives, the OpenAI client works against it, bad
requests get OpenAI-style errors and never hurt the server, a client that goes away frees its row, SIGTERM ends it cleanly."""
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from gptkit.batching import BatchEngine, Request
from gptkit.chat_template import prompt_for_reply
from gptkit.checkpoint import save_checkpoint
from gptkit.engine import generate
from helpers import REPO, run_script, tiny_model
from test_cli import assert_one_line_error

VOCAB = 320  # the bytes tokenizer's 264 ids fit


def chat_prompt(tok, *texts):
    return prompt_for_reply(tok, [(("user", "assistant")[i % 2], tok.encode(t)) for i, t in enumerate(texts)])


def engine_run(engine, requests):
    """Admit every request (as rows free up) and step until all are done."""
    waiting = list(requests)
    while waiting or engine.running:
        while waiting and engine.free_rows:
            engine.admit(waiting.pop(0))
        engine.step()
    return [r.tokens for r in requests]


# --- the batch engine --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, extra", [("gpt2", {}), ("modern", {}), ("gpt2", {"pos_encoding": "sinusoidal"}),
                                           ("modern", {"attn_pattern": "LG", "window": 8})])
def test_batched_greedy_decoding_gives_what_one_at_a_time_generation_gives(bytes_tok, preset, extra):
    model = tiny_model(preset, vocab_size=VOCAB, block_size=64, n_embd=32, scale=0.3, **extra)
    prompts = [bytes_tok.encode(t) for t in ("the cat", "a dog sees the moon", "x", "our teacher writes to the king")]
    alone = [list(generate(model, p, 12, temperature=0, vocab_limit=bytes_tok.n_vocab)) for p in prompts]
    engine = BatchEngine(model, bytes_tok, max_batch=3)  # 4 requests, 3 rows: one waits its turn
    together = engine_run(engine, [Request(p, 12, temperature=0) for p in prompts])
    assert together == alone


def test_sampling_with_a_seed_is_reproducible_and_independent_of_the_batch(bytes_tok):
    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=64, n_embd=32, scale=0.3)
    prompt = bytes_tok.encode("the cat")
    one = engine_run(BatchEngine(model, bytes_tok, 4), [Request(prompt, 10, temperature=1.0, seed=7)])[0]
    batch = engine_run(BatchEngine(model, bytes_tok, 4), [Request(prompt, 10, temperature=1.0, seed=s) for s in (1, 7, 3)])
    assert batch[1] == one and batch[0] != batch[1]


def test_greedy_and_sampled_rows_that_end_at_different_steps_each_get_what_they_get_alone(bytes_tok):
    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=64, n_embd=32, scale=0.3)
    specs = [("the cat", 3, 0.0), ("a dog", 9, 1.0), ("x", 5, 0.0), ("our king", 12, 0.0), ("moon", 7, 0.8)]
    make = lambda: [Request(bytes_tok.encode(p), n, temperature=t, seed=5) for p, n, t in specs]
    alone = [engine_run(BatchEngine(model, bytes_tok, 1), [r])[0] for r in make()]
    assert engine_run(BatchEngine(model, bytes_tok, 4), make()) == alone  # rows leave mid-batch, swapping places


def test_a_conversation_that_comes_back_reuses_its_cached_prefix(bytes_tok):
    model = tiny_model("modern", vocab_size=VOCAB, block_size=128, n_embd=32, scale=0.3)
    engine = BatchEngine(model, bytes_tok, max_batch=2)
    first = Request(chat_prompt(bytes_tok, "hello"), 6, temperature=0)
    engine_run(engine, [first, Request(chat_prompt(bytes_tok, "something else"), 6, temperature=0)])
    follow_up = chat_prompt(bytes_tok, "hello", bytes_tok.decode(first.tokens), "and then?")
    second = Request(follow_up, 6, temperature=0)
    engine_run(engine, [second])
    assert second.reused >= len(first.prompt_ids)  # the first turn's keys were still in a row
    assert second.tokens == list(generate(model, follow_up, 6, temperature=0, vocab_limit=bytes_tok.n_vocab))


def test_stop_strings_end_the_text_before_them_and_max_tokens_ends_with_length(bytes_tok):
    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=64, n_embd=32, scale=0.3)
    prompt = bytes_tok.encode("the cat")
    free = engine_run(BatchEngine(model, bytes_tok, 2), [Request(prompt, 12, temperature=0)])[0]
    text = bytes_tok.decode(free)
    stop = text[3:5]
    stopped = Request(prompt, 12, temperature=0, stop_strings=(stop,))
    limited = Request(prompt, 4, temperature=0)
    engine_run(BatchEngine(model, bytes_tok, 2), [stopped, limited])
    assert stopped.text == text[:text.index(stop)] and stopped.finish_reason == "stop"
    assert len(limited.tokens) == 4 and limited.finish_reason == "length"


def test_a_cancelled_request_leaves_the_batch_and_frees_its_row(bytes_tok):
    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=64, n_embd=32)
    engine = BatchEngine(model, bytes_tok, 2)
    a, b = Request(bytes_tok.encode("a"), 50, temperature=0), Request(bytes_tok.encode("b"), 50, temperature=0)
    engine.admit(a)
    engine.admit(b)
    engine.step()
    a.cancel()
    engine.step()
    assert a.finish_reason == "cancelled" and engine.running == 1 and engine.free_rows == 1 and not b.done


# --- the server -----------------------------------------------------------------------------------------------------------

def serve_config(**overrides):
    from serve import ServeConfig

    return SimpleNamespace(**{**ServeConfig().__dict__, "port": 0, "max_batch": 4, "temperature": 0.0, **overrides})


@pytest.fixture(scope="module")
def server(bytes_tok_module):
    import serve

    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=320, n_embd=32, scale=0.3)
    srv = serve.start(serve_config(), model, bytes_tok_module, "tiny")
    yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_address[1]}", model=model, tok=bytes_tok_module, server=srv)
    serve.stop(srv)


@pytest.fixture(scope="module")
def bytes_tok_module():
    from gptkit.tokenizer import byte_tokenizer

    return byte_tokenizer()


def post(url, body, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def client(server, **kw):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw)


def test_the_openai_client_chats_streamed_and_not_with_usage_and_finish_reasons(server):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["tiny"]
    messages = [{"role": "user", "content": "Hello there"}]
    whole = api.chat.completions.create(model="tiny", messages=messages, max_tokens=8)
    expected = server.tok.decode(list(generate(server.model, chat_prompt(server.tok, "Hello there"), 8, temperature=0,
                                               vocab_limit=server.tok.n_vocab, stop_ids=(server.tok.special_id("<|assistant_end|>"),))))
    assert whole.choices[0].message.content == expected.replace("<|assistant_end|>", "")
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.prompt_tokens == len(chat_prompt(server.tok, "Hello there"))
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(api.chat.completions.create(model="tiny", messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices


def test_completions_and_stop_strings(server):
    api = client(server)
    full = api.completions.create(model="tiny", prompt="the cat", max_tokens=10)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 10
    stop = full.choices[0].text[2:4]
    cut = api.completions.create(model="tiny", prompt="the cat", max_tokens=10, stop=[stop])
    assert cut.choices[0].text == full.choices[0].text[:full.choices[0].text.index(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "tiny", "messages": "hi"}, 400, "'messages' must be a list"),
    ({"model": "tiny", "messages": []}, 400, "non-empty"),
    ({"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "'temperature' must be a number"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "'max_tokens' is 0"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "'n' is 2"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 400}]}, 400, "more than the model's context"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_an_openai_error_object(server, body, status, fragment):
    code, reply = post(f"{server.url}/v1/chat/completions", body)
    assert code == status and fragment in reply["error"]["message"], reply
    assert set(reply["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_an_oversized_body_and_an_unknown_path_are_errors_and_the_server_lives_on(server):
    assert post(f"{server.url}/v1/chat/completions", None, raw=b"{not json")[0] == 400
    assert post(f"{server.url}/v1/chat/completions", None, raw=b"x" * (1024 * 1024 + 1))[0] == 413
    assert post(f"{server.url}/v1/nothing", {})[0] == 404
    code, reply = post(f"{server.url}/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x" * 400}],
                                                              "truncation": "auto", "max_tokens": 4})
    assert code == 400 and "shorten" in reply["error"]["message"]  # a single message too long even alone
    assert urllib.request.urlopen(f"{server.url}/health", timeout=10).status == 200


def test_a_completion_whose_reply_alone_fills_the_context_is_a_400_even_with_truncation(server):
    code, reply = post(f"{server.url}/v1/completions", {"model": "tiny", "prompt": "the cat", "max_tokens": 320, "truncation": "auto"})
    assert code == 400 and "more than the model's context of 320 tokens" in reply["error"]["message"]
    code, reply = post(f"{server.url}/v1/completions", {"model": "tiny", "prompt": "x" * 400, "max_tokens": 4, "truncation": "auto"})
    assert code == 200 and reply["usage"]["prompt_tokens"] == 316  # the end of the prompt kept, beside the reply's 4 tokens


def test_four_concurrent_clients_get_what_they_get_one_at_a_time(server):
    api = client(server)
    prompts = ["the cat", "a dog sees", "hello", "our teacher writes"]
    ask = lambda p: api.chat.completions.create(model="tiny", messages=[{"role": "user", "content": p}], max_tokens=16).choices[0].message.content
    one_at_a_time = [ask(p) for p in prompts]
    results = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(prompts[i]))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == one_at_a_time


def stream_of(pieces, gap_s, interval_s):
    """serve.pieces over a request that emits `pieces` gap_s apart, then ends: [(seconds since the start, text sent)]."""
    import serve

    events, ended = queue.Queue(), threading.Event()

    def tokens():
        for piece in pieces:
            events.put(piece)
            time.sleep(gap_s)
        events.put(None)
        ended.set()

    start = time.monotonic()
    threading.Thread(target=tokens).start()
    return [(time.monotonic() - start, text) for text in serve.pieces(events, ended, interval_s)]


def test_a_stream_sends_the_first_text_at_once_then_at_most_one_event_per_interval():
    sent = stream_of([str(i % 10) for i in range(60)], 0.005, 0.1)  # a piece every 5 ms for 0.3 s
    assert "".join(text for _, text in sent) == "".join(str(i % 10) for i in range(60))
    assert sent[0][0] < 0.1 and len(sent) >= 3
    before_the_end = sent[:-1]  # the last comes as soon as the request ends
    assert all(later - earlier >= 0.1 for (earlier, _), (later, _) in zip(before_the_end, before_the_end[1:]))


def test_a_stream_that_ends_sends_its_last_text_without_waiting_out_the_interval():
    start = time.monotonic()
    sent = stream_of(["a", "b", "c"], 0.01, 5.0)
    assert [text for _, text in sent] == ["a", "bc"] and time.monotonic() - start < 2.5


def test_a_client_that_disconnects_mid_stream_frees_its_row(bytes_tok):
    import serve

    model = tiny_model("gpt2", vocab_size=VOCAB, block_size=2048, n_embd=32)  # 2,000 tokens to go: seconds, if nothing stopped it
    srv = serve.start(serve_config(), model, bytes_tok, "tiny")
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 2000, "ignore_eos": True})
    try:
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30) as s:
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                      f"{body}".encode())
            received = b""
            while received.count(b"data:") < 3:  # the role, then text: it is generating
                received += s.recv(4096)
        deadline = time.time() + 20
        while time.time() < deadline:
            health = json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())
            if health["running"] == 0 and health["waiting"] == 0:
                break
            time.sleep(0.05)
        assert health["running"] == 0 and health["waiting"] == 0 and health["cancelled"] == 1 and health["finished"] == 0
    finally:
        serve.stop(srv)


@contextmanager
def tiny_server(tokenizer, **config):
    """A server of its own (for tests that break or configure it): (server, its URL)."""
    import serve

    srv = serve.start(serve_config(**config), tiny_model("gpt2", vocab_size=VOCAB, n_embd=32, block_size=64), tokenizer, "tiny")
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        serve.stop(srv)


HI = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_an_error_inside_generation_fails_its_request_and_the_server_goes_on(bytes_tok, monkeypatch):
    with tiny_server(bytes_tok) as (srv, url):
        engine, failed = srv.app.scheduler.engine, []
        step = engine.step

        def breaks_once():
            if engine.running and not failed:
                failed.append(True)
                raise RuntimeError("a bug")
            return step()

        monkeypatch.setattr(engine, "step", breaks_once)
        code, reply = post(f"{url}/v1/chat/completions", HI)
        assert code == 500 and "generation failed (RuntimeError)" in reply["error"]["message"] and failed
        assert post(f"{url}/v1/chat/completions", HI)[0] == 200


def test_a_prefill_that_fails_fails_its_request_only(bytes_tok, monkeypatch):
    with tiny_server(bytes_tok) as (srv, url):
        model, failed = srv.app.scheduler.engine.model, []
        forward = model.forward

        def breaks_once(idx, *args, **kwargs):
            if idx.shape[1] > 1 and not failed:  # a prompt's prefill, not a decode step
                failed.append(True)
                raise RuntimeError("out of memory, say")
            return forward(idx, *args, **kwargs)

        monkeypatch.setattr(model, "forward", breaks_once)
        code, reply = post(f"{url}/v1/chat/completions", HI)
        assert code == 500 and "generation failed (RuntimeError)" in reply["error"]["message"] and failed
        assert post(f"{url}/v1/chat/completions", HI)[0] == 200 and srv.app.scheduler.engine.running == 0


def test_an_api_key_is_required_when_set(bytes_tok):
    with tiny_server(bytes_tok, api_key="s3cret") as (_, url):
        code, reply = post(f"{url}/v1/chat/completions", HI)
        assert code == 401 and reply["error"]["code"] == "invalid_api_key"
        assert post(f"{url}/v1/chat/completions", HI, {"Authorization": "Bearer s3cret"})[0] == 200


def test_sigterm_stops_accepting_ends_the_streams_in_flight_and_exits_cleanly(tmp_path, bytes_tok):
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("gpt2", vocab_size=VOCAB, block_size=512, n_embd=32), bytes_tok, chat_tuned=True)
    process = subprocess.Popen([sys.executable, "serve.py", f"--ckpt={tmp_path / 'ckpt.pt'}", "--port=0", "--device=cpu"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "serving ckpt" in line, line
        url = line.split(" at ")[1].split(" ")[0].rstrip("/")
        body = json.dumps({"model": "ckpt", "messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 400}).encode()
        response = urllib.request.urlopen(urllib.request.Request(f"{url}/v1/chat/completions", data=body), timeout=30)
        assert response.readline().startswith(b"data:")
        process.send_signal(signal.SIGTERM)
        rest = response.read()
        assert rest.rstrip().endswith(b"data: [DONE]")  # the stream in flight ended properly
        assert process.wait(timeout=30) == 0
        assert "stopped" in process.stderr.read()
    finally:
        process.kill()


def test_serve_has_help_and_refuses_a_port_in_use_in_one_line(tmp_path, bytes_tok):
    result = subprocess.run([sys.executable, "serve.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "--port=8000" in result.stdout and "--api_key=" in result.stdout
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("gpt2", vocab_size=VOCAB, n_embd=32), bytes_tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run([sys.executable, "serve.py", f"--ckpt={tmp_path / 'ckpt.pt'}", f"--port={port}"], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_the_serving_benchmark_runs_and_ends_with_its_line(tmp_path, bytes_tok):
    save_checkpoint(tmp_path / "ckpt.pt", tiny_model("gpt2", vocab_size=VOCAB, block_size=128, n_embd=32), bytes_tok, chat_tuned=True)
    result = run_script("bench/serve.py", f"--ckpt={tmp_path / 'ckpt.pt'}", "--clients=1,4", "--requests=1", "--max_tokens=6", "--rounds=2",
                        timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"serve: clients=4 speedup=\d+\.\d\d ttft_p50_ms=\d+", lines[-1]), lines[-1]
    assert any(line.split()[:2] == ["4", "48"] and line.endswith("yes") for line in lines)  # 2 rounds x 4 clients x 6 tokens, same as alone
