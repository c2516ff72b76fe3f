"""Reading a reply in the widget, in Chromium against a real chat-server: links in its Markdown
(only http, https and mailto ever become links; everything else stays text) and the copy buttons.

The echo model replies "You said: <message>", so a message written in Markdown comes back as a
reply that the widget renders as Markdown.
"""

from __future__ import annotations

from typing import Any

from test_widget import expect, open_chat, replies, send

SHADOW = "document.querySelector('#chat').shadowRoot"

# Each stays text: none may become a link with a bad scheme, an element, or an event handler.
INJECTIONS = [
    "javascript:alert(1)",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](java&#x09;script:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[x](vbscript:msgbox(1))",
    '[x](https://a.example/" onmouseover="alert(1))',
    '[x"><img src=x onerror=alert(1)>](https://ok.example)',
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "<script>alert(1)</script>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "[x](//evil.example/path)",
    "[x](  javascript:alert(1))",
]

# What the reply's text holds of each (the brackets of a link that became one are gone).
SHOWN = {
    '[x"><img src=x onerror=alert(1)>](https://ok.example)': 'x"><img src=x onerror=alert(1)>',
}


def fail_on_dialogs(page: Any) -> list[str]:
    """Any alert/confirm/prompt: a script ran. Recorded here, asserted empty by the test."""
    fired: list[str] = []
    page.on("dialog", lambda d: fired.append(f"{d.type}: {d.message}"))
    return fired


def anchors(page: Any) -> list[dict[str, Any]]:
    """Every <a> in the widget: its href as written, its text, rel and target."""
    return page.evaluate(f"""() => Array.from({SHADOW}.querySelectorAll('.cw-assistant a')).map(a => ({{
        href: a.getAttribute('href'), text: a.textContent, rel: a.getAttribute('rel'),
        target: a.getAttribute('target')}}))""")


def reply_bubble(page: Any) -> Any:
    bubble = replies(page, "complete").locator(".cw-bubble")
    expect(bubble).to_have_count(1)
    return bubble


def test_links_in_a_reply_open_safely_in_a_new_tab(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    open_chat(page, server.base_url + "/")
    send(page, "See https://example.com/path?q=1, then [the docs](https://docs.example/a_(b)) and "
               "[mail us](mailto:team@example.com).\n\n- **read [this](http://plain.example/x)**\n"
               "- `https://not.a.link/in-code` (or https://paren.example/p).")
    bubble = reply_bubble(page)
    expect(bubble.locator("a")).to_have_count(5)
    found = anchors(page)
    assert [(a["href"], a["text"]) for a in found] == [
        ("https://example.com/path?q=1", "https://example.com/path?q=1"),  # the comma after it is text
        ("https://docs.example/a_(b)", "the docs"),
        ("mailto:team@example.com", "mail us"),
        ("http://plain.example/x", "this"),
        ("https://paren.example/p", "https://paren.example/p"),  # not the ")." after it
    ], found
    assert all(a["rel"] == "noopener noreferrer" and a["target"] == "_blank" for a in found), found
    expect(bubble.locator("ul strong a")).to_have_text("this")  # a link inside bold
    expect(bubble.locator("code")).to_have_text("https://not.a.link/in-code")  # code is code
    expect(bubble).to_contain_text("You said: See https://example.com/path?q=1, then the docs and mail us.")


def test_no_injection_in_a_reply_becomes_a_link_an_element_or_a_handler(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    fired = fail_on_dialogs(page)
    open_chat(page, server.base_url + "/")
    send(page, "\n\n".join(INJECTIONS))
    bubble = reply_bubble(page)
    text = bubble.text_content()
    for case in INJECTIONS:
        assert SHOWN.get(case, case) in text, f"{case!r} is not shown as text: {text!r}"

    # Only the two http(s) URLs that were there become links; nothing else does.
    found = anchors(page)
    assert sorted(a["href"] for a in found) == ["https://a.example/", "https://ok.example/"], found
    bad = page.evaluate(f"""() => {{
        const out = [];
        for (const root of [document.body, {SHADOW}]) {{
            for (const el of root.querySelectorAll('*')) {{
                for (const attr of el.attributes) {{
                    if (/^on/i.test(attr.name)) out.push(el.tagName + ' ' + attr.name);
                    if (/^\\s*(javascript|data|vbscript):/i.test(attr.value)) out.push(el.tagName + ' ' + attr.name);
                }}
            }}
            for (const el of root.querySelectorAll('img, iframe, object, embed')) out.push(el.tagName);
        }}
        for (const el of {SHADOW}.querySelectorAll('script')) out.push('SCRIPT');
        return out;
    }}""")
    assert bad == [], bad
    # The link made of the attribute breakout: hovering and pressing it runs nothing.
    breakout = bubble.locator('a[href="https://a.example/"]')
    breakout.hover()
    bubble.locator("a", has_text='x"><img src=x onerror=alert(1)>').hover()
    page.wait_for_timeout(300)
    assert fired == [] and page.seen.dialogs == [], fired


def test_the_markdown_renderer_keeps_each_injection_as_text(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    fired = fail_on_dialogs(page)
    open_chat(page, server.base_url + "/")
    for case in INJECTIONS:
        out = page.evaluate("""text => {
            const div = document.createElement('div');
            div.appendChild(ChatWidget.renderMarkdown(text));
            document.body.appendChild(div);  // in the page: an image would load, a handler could run
            const els = Array.from(div.querySelectorAll('*'));
            return {
                text: div.textContent,
                tags: els.map(e => e.tagName),
                hrefs: els.filter(e => e.hasAttribute('href')).map(e => e.href),
                handlers: els.flatMap(e => Array.from(e.attributes).map(a => a.name)).filter(n => /^on/i.test(n)),
            };
        }""", case)
        assert SHOWN.get(case, case) in out["text"], (case, out)
        assert set(out["tags"]) <= {"P", "A"}, (case, out)
        assert all(h in ("https://a.example/", "https://ok.example/") for h in out["hrefs"]), (case, out)
        assert out["handlers"] == [], (case, out)
    page.wait_for_timeout(200)
    assert fired == [], fired


def test_copy_buttons_copy_a_reply_as_markdown_and_a_code_block_as_code(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    open_chat(page, server.base_url + "/")
    send(page, "**Hi**, here:\n\n```python\ndef f():\n    return  {'a': 1}\n```\n\nthen `x`.")
    bubble = reply_bubble(page)
    reply = replies(page, "complete")

    code_button = bubble.get_by_role("button", name="Copy code", exact=True)
    code_button.click()
    expect(code_button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "def f():\n    return  {'a': 1}"
    expect(code_button).to_have_text("Copy")  # only for a moment

    reply_button = reply.get_by_role("button", name="Copy reply", exact=True)
    reply_button.click()
    expect(reply_button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == (
        "You said: **Hi**, here:\n\n```python\ndef f():\n    return  {'a': 1}\n```\n\nthen `x`.")


def test_copy_works_without_the_clipboard_api(make_server: Any, page: Any) -> None:
    server = make_server("sqlite")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base_url)
    # A browser without navigator.clipboard (an insecure page, an old browser): the fallback copies.
    page.add_init_script("""
        window.readClipboard = navigator.clipboard.readText.bind(navigator.clipboard);
        Object.defineProperty(Navigator.prototype, 'clipboard', {get: () => undefined, configurable: true});
    """)
    open_chat(page, server.base_url + "/")
    send(page, "copy me *please*")
    reply_button = replies(page, "complete").get_by_role("button", name="Copy reply", exact=True)
    reply_button.click()
    expect(reply_button).to_have_text("Copied")
    assert page.evaluate("window.readClipboard()") == "You said: copy me *please*"
    expect(reply_button).to_be_focused()
