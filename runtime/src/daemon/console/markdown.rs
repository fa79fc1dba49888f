//! A listing's README (a stranger's Markdown) as HTML for the capsule
//! page. Raw HTML in the text comes out escaped, as text; a link or an
//! image keeps its URL only when it is `http:`, `https:` or relative
//! (anything else — `javascript:`, `data:`, `vbscript:`, … — keeps its
//! text and loses the link, an image keeps its alt text). Everything else
//! is what `pulldown-cmark` makes of CommonMark with tables,
//! strikethrough and task lists. Cost: one pass over the text (a README is
//! at most 256 KiB, `listing::MAX_README_BYTES`); allocates the output.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd, html};

/// The README `markdown` as safe HTML (see the module's rules).
pub fn render(markdown: &str) -> String {
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    // Which open links were dropped (their end tags must be dropped too).
    let mut links: Vec<bool> = Vec::new();
    // Inside a dropped image: its alt text is kept as plain text.
    let mut dropped_images = 0usize;
    let events = Parser::new_ext(markdown, options).filter_map(|event| match event {
        Event::Html(text) | Event::InlineHtml(text) => Some(Event::Text(text)),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            let safe = allowed_url(&dest_url);
            links.push(safe);
            safe.then_some(Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }))
        }
        Event::End(TagEnd::Link) => links.pop().unwrap_or(false).then_some(event),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            if dropped_images == 0 && allowed_url(&dest_url) {
                Some(Event::Start(Tag::Image {
                    link_type,
                    dest_url,
                    title,
                    id,
                }))
            } else {
                dropped_images += 1;
                None
            }
        }
        Event::End(TagEnd::Image) if dropped_images > 0 => {
            dropped_images -= 1;
            None
        }
        other => Some(other),
    });
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 4);
    html::push_html(&mut out, events);
    out
}

/// Whether a README may link to (or show an image from) `url`: `http:`,
/// `https:` or a relative URL. Checked the way a browser reads the scheme:
/// ASCII whitespace and control characters anywhere are ignored, case too.
pub fn allowed_url(url: &CowStr<'_>) -> bool {
    let cleaned: String = url
        .chars()
        .filter(|c| !c.is_ascii_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    if cleaned.starts_with("http:") || cleaned.starts_with("https:") {
        return true;
    }
    // Relative: no scheme, i.e. no `:` before the first `/`, `?` or `#`.
    let head = cleaned.split(['/', '?', '#']).next().unwrap_or("");
    !head.contains(':') && !cleaned.starts_with("\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_renders() {
        let html =
            render("# Calc\n\nEvaluates `1+2` **fast**.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert!(html.contains("<h1>Calc</h1>"), "{html}");
        assert!(html.contains("<code>1+2</code>"), "{html}");
        assert!(html.contains("<strong>fast</strong>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
        let html = render("[docs](https://example.com/d) [rel](docs/x.md) ![logo](logo.png)");
        assert!(
            html.contains(r#"<a href="https://example.com/d">docs</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"<a href="docs/x.md">rel</a>"#), "{html}");
        assert!(
            html.contains(r#"<img src="logo.png" alt="logo" />"#),
            "{html}"
        );
    }

    /// A stranger's README cannot put markup, script or a script URL on
    /// the page: raw HTML is text, bad URLs lose their link.
    #[test]
    fn raw_html_and_script_urls_are_neutralised() {
        let readme = "<script>alert(1)</script>\n\n\
            Hello <img src=x onerror=alert(2)> world <b onclick=\"x()\">b</b>\n\n\
            [click](javascript:alert(3)) [tab](java\tscript:alert(4)) [ent](javascript&colon;alert(5))\n\n\
            [upper](JaVaScRiPt:alert(6)) [data](data:text/html;base64,PHNjcmlwdD4=) [vb](vbscript:x)\n\n\
            ![pic](javascript:alert(7)) ![ok *alt*](https://example.com/i.png)\n\n\
            <a href=\"javascript:alert(8)\">raw link</a>\n\n\
            [ref][r]\n\n[r]: javascript:alert(9)\n";
        let html = render(readme);
        // (Escaped text such as `&lt;a href="javascript:…"&gt;` is inert.)
        for bad in [
            "<script",
            "<img src=x",
            "<b ",
            "<a href=\"java",
            "<a href=\"data:",
            "<a href=\"vbscript",
            "src=\"javascript",
        ] {
            assert!(
                !html
                    .to_ascii_lowercase()
                    .contains(&bad.to_ascii_lowercase()),
                "{bad} in {html}"
            );
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img src=x onerror=alert(2)&gt;"),
            "{html}"
        );
        // The link text stays, without the link.
        assert!(html.contains("click"), "{html}");
        assert!(html.contains("ref"), "{html}");
        assert!(
            html.contains(r#"<img src="https://example.com/i.png" alt="ok alt" />"#),
            "{html}"
        );
        // A dropped image keeps its alt text only.
        assert!(html.contains("pic"), "{html}");
        assert!(!html.contains("alert(7)\""), "{html}");
    }

    #[test]
    fn only_http_https_and_relative_urls_are_allowed() {
        for ok in [
            "https://a.b/c",
            "http://a",
            "HTTPS://A",
            "x.md",
            "/ui/x",
            "#top",
            "?q=1",
            "a/b:c",
            " https://a",
        ] {
            assert!(allowed_url(&CowStr::from(ok)), "{ok}");
        }
        for bad in [
            "javascript:x",
            " javascript:x",
            "java\nscript:x",
            "JAVASCRIPT:x",
            "data:x",
            "vbscript:x",
            "file:///etc",
            "mailto:a@b",
            "\\\\evil",
        ] {
            assert!(!allowed_url(&CowStr::from(bad)), "{bad}");
        }
    }
}
