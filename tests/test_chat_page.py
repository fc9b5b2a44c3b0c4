"""The chat page in a real browser (Chromium driven by Playwright) against the real server and a tiny model: type a
message and watch it stream, stop, regenerate, export; and untrusted model text never becomes markup.

Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it when it can) and the playwright package
(a test dependency; no browser download: Playwright drives the system browser). Skips with a clear message otherwise.
"""
import json
import shutil
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import tiny_model

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
VOCAB = 320


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine: apt-get install chromium (the browser test drives the system browser)")
    import serve
    from gptkit.tokenizer import byte_tokenizer

    tokenizer = byte_tokenizer()
    model = talkative_model(tokenizer)
    config = SimpleNamespace(**{**serve.ServeConfig().__dict__, "port": 0, "max_batch": 4})
    server = serve.start(config, model, tokenizer, "tiny")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
        page = context.new_page()
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{url}/")
        yield SimpleNamespace(page=page, url=url, dialogs=dialogs, expect=sync_api.expect, shots=tmp_path_factory.mktemp("shots"))
        browser.close()
    serve.stop(server)


def talkative_model(tokenizer):
    """A tiny random model that never ends its reply by itself (its special tokens' output rows are zero, so other tokens
    win), so that a reply runs long enough to be stopped."""
    from gptkit.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**vars(tiny_model("gpt2", vocab_size=VOCAB, block_size=1024, n_embd=32).config), "tie_embeddings": False}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
        model.lm_head.weight[256:] = 0.0  # the bytes tokenizer's ids from 256 on are its special tokens
    return model.eval()


def health(url):
    return json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())


def api_reply(url, messages, max_tokens):
    body = json.dumps({"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=60).read())["choices"][0]["message"]["content"]


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


def settle(b):
    b.page.wait_for_selector('#messages[data-streaming="false"]', timeout=60000)


def test_a_message_streams_in_and_equals_the_apis_reply(browser_page):
    b = browser_page
    b.expect(b.page.locator("#model-name")).to_have_text("tiny")
    b.page.fill("#temperature", "0")
    b.page.fill("#max-tokens", "24")
    send(b.page, "Hello there")
    settle(b)
    reply = b.page.locator('.message.assistant[data-index="1"] .content').inner_text()
    assert reply.strip() and reply.strip() == api_reply(b.url, [{"role": "user", "content": "Hello there"}], 24).strip()
    b.page.screenshot(path=str(b.shots / "reply.png"))


def test_stop_keeps_the_partial_reply_and_frees_the_servers_row(browser_page):
    b = browser_page
    b.page.click("#new-chat")
    b.page.fill("#max-tokens", "900")
    cancelled = health(b.url)["cancelled"]
    send(b.page, "Tell me everything")
    b.page.wait_for_function("() => (document.querySelector('.message.assistant .content') || {}).textContent?.length > 5", timeout=60000)
    b.page.click("#stop")
    settle(b)
    partial = b.page.locator(".message.assistant .content").inner_text()
    assert 0 < len(partial) < 900
    deadline_checks = 200
    while health(b.url)["running"] and deadline_checks:
        b.page.wait_for_timeout(50)
        deadline_checks -= 1
    assert health(b.url)["running"] == 0 and health(b.url)["cancelled"] == cancelled + 1


def test_regenerate_asks_again_and_greedy_gives_the_same_reply(browser_page):
    b = browser_page
    b.page.click("#new-chat")
    b.page.fill("#max-tokens", "16")
    send(b.page, "Once more")
    settle(b)
    first = b.page.locator(".message.assistant .content").inner_text()
    b.page.click("#regenerate")
    settle(b)
    assert b.page.locator(".message.assistant").count() == 1
    assert b.page.locator(".message.assistant .content").inner_text() == first


def test_export_writes_the_jsonl_that_chat_py_saves(browser_page, tmp_path):
    b = browser_page
    with b.page.expect_download() as download:
        b.page.click("#export")
    path = tmp_path / "conversation.jsonl"
    download.value.save_as(path)
    assert download.value.suggested_filename == "conversation.jsonl"
    messages = json.loads(path.read_text(encoding="utf-8"))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[0]["content"] == "Once more"
    from gptkit.chat_template import read_conversations

    assert read_conversations(path)[0]["messages"] == messages  # chat.py's /load reads it


def test_model_text_with_script_and_img_onerror_renders_as_text(browser_page):
    b = browser_page
    evil = '<script>alert(1)</script> and <img src=x onerror=alert(2)> and **bold**'
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {"content": evil}, "finish_reason": None}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    # The model's words come from the network: here they are these, as a model could write them
    b.page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=body))
    try:
        b.page.click("#new-chat")
        send(b.page, "say something dangerous")
        settle(b)
    finally:
        b.page.unroute("**/v1/chat/completions")
    content = b.page.locator(".message.assistant .content")
    assert "<script>alert(1)</script>" in content.inner_text() and "<img src=x onerror=alert(2)>" in content.inner_text()
    assert content.locator("script").count() == 0 and content.locator("img").count() == 0
    assert content.locator("strong").inner_text() == "bold"  # markdown still renders
    b.page.wait_for_timeout(200)
    assert b.dialogs == []
