//! Rendering with ratatui: header, tabs, the current tab's table (or an
//! open trace), footer with the keys.

use super::app::{App, Tab};
use super::model::{kind_label, Model, Reason, RowView, TableKind, TreeLine, WINDOW_SECS};
use autotel_model::{AttrValue, Span, StatusCode};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span as TSpan};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState, Tabs};
use ratatui::Frame;

/// `1.23s`, `12.3ms`, `456µs`.
pub fn fmt_dur(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2}s", ns as f64 / 1e9)
    } else if ns >= 10_000_000 {
        format!("{:.0}ms", ns as f64 / 1e6)
    } else if ns >= 1_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{}µs", ns / 1000)
    }
}

fn fmt_opt_dur(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".to_owned(), fmt_dur)
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn fmt_pct(rate: f64, err: f64) -> String {
    if rate == 0.0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", err * 100.0)
    }
}

const HEADER_STYLE: Style = Style::new().add_modifier(Modifier::BOLD);

pub fn draw(f: &mut Frame, app: &mut App, model: &mut Model, now_ms: u64) {
    let [head, tabs, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let rate = model.span_rate(now_ms);
    let header = format!(
        " autotel top | {} spans/s ({WINDOW_SECS}s window) | {} spans | rows {}/{}/{} | traces kept {} ({} spans)",
        fmt_rate(rate),
        model.total_spans,
        model.services.len(),
        model.database.len(),
        model.dns.len(),
        model.traces.trace_count(),
        model.traces.span_count(),
    );
    f.render_widget(
        Paragraph::new(header).style(Style::new().fg(Color::Black).bg(Color::Cyan)),
        head,
    );

    let titles: Vec<String> = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()))
        .collect();
    f.render_widget(
        Tabs::new(titles)
            .select(app.tab.index())
            .highlight_style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
        tabs,
    );

    if app.detail.is_some() {
        draw_detail(f, app, body);
    } else {
        match app.tab {
            Tab::Services => draw_table(f, app, model, TableKind::Services, body, now_ms),
            Tab::Database => draw_table(f, app, model, TableKind::Database, body, now_ms),
            Tab::Dns => draw_table(f, app, model, TableKind::Dns, body, now_ms),
            Tab::Slow => draw_slow(f, app, model, body, now_ms),
        }
    }

    let sort = format!(
        "{}{}",
        app.sort.label(),
        if app.reverse { " (rev)" } else { "" }
    );
    let keys: Vec<(&str, String)> = if app.detail.is_some() {
        vec![
            ("q", "quit".into()),
            ("↑↓", "select span".into()),
            ("Esc/Enter", "back".into()),
        ]
    } else {
        let mut k = vec![
            ("q", "quit".into()),
            ("Tab/1-4", "switch tab".into()),
            ("↑↓ PgUp/PgDn", "move".into()),
            ("s", format!("sort: {sort}")),
            ("r", "reverse".into()),
        ];
        if app.tab == Tab::Slow {
            k.push(("Enter", "show trace".into()));
        }
        k
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(TSpan::styled(
            format!(" {k} "),
            Style::new().fg(Color::Black).bg(Color::Gray),
        ));
        spans.push(TSpan::raw(format!(" {what}  ")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), foot);
}

fn draw_rows(
    f: &mut Frame,
    app: &mut App,
    area: Rect,
    header: Row,
    rows: Vec<Row>,
    widths: Vec<Constraint>,
    title: String,
) {
    app.rows = rows.len();
    app.page = area.height.saturating_sub(3).max(1) as usize;
    let idx = app.tab.index();
    app.selected[idx] = app.selected[idx].min(app.rows.saturating_sub(1));
    let mut state = TableState::default().with_selected(Some(app.selected[idx]));
    let table = Table::new(rows, widths)
        .header(header.style(HEADER_STYLE))
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, area, &mut state);
}

fn err_style(v: &RowView) -> Style {
    if v.error_rate > 0.0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    }
}

fn draw_table(
    f: &mut Frame,
    app: &mut App,
    model: &mut Model,
    kind: TableKind,
    area: Rect,
    now_ms: u64,
) {
    let views = model.views(kind, now_ms, app.sort, app.reverse);
    let title = format!(" {} rows, sorted by {} ", views.len(), app.sort.label());
    let (header, widths, rows): (Row, Vec<Constraint>, Vec<Row>) = match kind {
        TableKind::Services => (
            Row::new([
                "SERVICE",
                "KIND",
                "ROUTE / SPAN",
                "REQ/S",
                "ERR%",
                "P50",
                "P99",
                "TOTAL",
            ]),
            vec![
                Constraint::Length(18),
                Constraint::Length(8),
                Constraint::Fill(1),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(10),
            ],
            views
                .iter()
                .map(|v| {
                    Row::new(vec![
                        Cell::from(v.key[0].clone()),
                        Cell::from(v.key[2].clone()),
                        Cell::from(v.key[1].clone()),
                        Cell::from(fmt_rate(v.rate)),
                        Cell::from(fmt_pct(v.rate, v.error_rate)).style(err_style(v)),
                        Cell::from(fmt_opt_dur(v.p50_ns)),
                        Cell::from(fmt_opt_dur(v.p99_ns)),
                        Cell::from(v.total.to_string()),
                    ])
                })
                .collect(),
        ),
        TableKind::Database => (
            Row::new([
                "SYSTEM",
                "OPERATION",
                "REQ/S",
                "ERR%",
                "P50",
                "P99",
                "TOTAL",
                "SAMPLE QUERY",
            ]),
            vec![
                Constraint::Length(12),
                Constraint::Length(24),
                Constraint::Length(9),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Fill(1),
            ],
            views
                .iter()
                .map(|v| {
                    Row::new(vec![
                        Cell::from(v.key[0].clone()),
                        Cell::from(v.key[1].clone()),
                        Cell::from(fmt_rate(v.rate)),
                        Cell::from(fmt_pct(v.rate, v.error_rate)).style(err_style(v)),
                        Cell::from(fmt_opt_dur(v.p50_ns)),
                        Cell::from(fmt_opt_dur(v.p99_ns)),
                        Cell::from(v.total.to_string()),
                        Cell::from(v.sample.clone()),
                    ])
                })
                .collect(),
        ),
        TableKind::Dns => (
            Row::new([
                "QUESTION",
                "TYPE",
                "LOOKUPS/S",
                "ERR%",
                "ERRORS",
                "P99",
                "TOTAL",
                "LAST ERROR",
            ]),
            vec![
                Constraint::Fill(1),
                Constraint::Length(6),
                Constraint::Length(10),
                Constraint::Length(7),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(12),
            ],
            views
                .iter()
                .map(|v| {
                    Row::new(vec![
                        Cell::from(v.key[0].clone()),
                        Cell::from(v.key[1].clone()),
                        Cell::from(fmt_rate(v.rate)),
                        Cell::from(fmt_pct(v.rate, v.error_rate)).style(err_style(v)),
                        Cell::from(v.total_errors.to_string()),
                        Cell::from(fmt_opt_dur(v.p99_ns)),
                        Cell::from(v.total.to_string()),
                        Cell::from(v.sample.clone()),
                    ])
                })
                .collect(),
        ),
    };
    draw_rows(f, app, area, header, rows, widths, title);
}

/// What a span's status column shows: HTTP code, gRPC code, error type.
fn status_text(s: &Span) -> String {
    for k in [
        "http.response.status_code",
        "rpc.grpc.status_code",
        "error.type",
        "dns.response_code",
    ] {
        if let Some(v) = s.attr(k) {
            return v.to_string();
        }
    }
    match s.status {
        StatusCode::Error => "error".into(),
        StatusCode::Ok => "ok".into(),
        StatusCode::Unset => String::new(),
    }
}

fn draw_slow(f: &mut Frame, app: &mut App, model: &Model, area: Rect, now_ms: u64) {
    if app.slow_follows() {
        app.slow = model.slow.iter().cloned().collect();
    }
    let title = if app.slow_follows() {
        format!(" {} recent slow or failed requests ", app.slow.len())
    } else {
        format!(
            " {} slow or failed requests (frozen: Home to follow) ",
            app.slow.len()
        )
    };
    let rows = app
        .slow
        .iter()
        .map(|e| {
            let s = &e.span;
            let (reason, style) = match e.reason {
                Reason::Failed => ("FAILED", Style::new().fg(Color::Red)),
                Reason::Slow => ("SLOW", Style::new().fg(Color::Yellow)),
            };
            Row::new(vec![
                Cell::from(format!(
                    "{:.0}s",
                    now_ms.saturating_sub(e.seen_ms) as f64 / 1000.0
                )),
                Cell::from(reason).style(style),
                Cell::from(s.resource.service_name.clone()),
                Cell::from(kind_label(s.kind)),
                Cell::from(s.name.to_string()),
                Cell::from(fmt_dur(s.duration_ns())),
                Cell::from(status_text(s)),
            ])
        })
        .collect();
    draw_rows(
        f,
        app,
        area,
        Row::new([
            "AGO", "REASON", "SERVICE", "KIND", "NAME", "DURATION", "STATUS",
        ]),
        rows,
        vec![
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(18),
            Constraint::Length(8),
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
        title,
    );
}

fn tree_row(l: &TreeLine, t0: u64) -> Row<'static> {
    let s = &l.span;
    let style = if s.status == StatusCode::Error {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    Row::new(vec![
        Cell::from(format!("{}{}", "  ".repeat(l.depth.min(20)), s.name)).style(style),
        Cell::from(s.resource.service_name.clone()),
        Cell::from(kind_label(s.kind)),
        Cell::from(format!("+{}", fmt_dur(s.start_unix_ns.saturating_sub(t0)))),
        Cell::from(fmt_dur(s.duration_ns())),
        Cell::from(status_text(s)),
    ])
}

fn attr_lines(s: &Span) -> Vec<Line<'static>> {
    let kv = |k: &str, v: String| {
        Line::from(vec![
            TSpan::styled(format!("{k:<28}"), Style::new().fg(Color::Cyan)),
            TSpan::raw(v),
        ])
    };
    let mut out = vec![
        kv("name", s.name.to_string()),
        kv("kind", kind_label(s.kind).into()),
        kv("service.name", s.resource.service_name.clone()),
        kv("process.pid", s.resource.pid.to_string()),
        kv("trace_id", hex::encode(s.trace_id)),
        kv("span_id", hex::encode(s.span_id)),
        kv(
            "parent_span_id",
            s.parent_span_id.map(hex::encode).unwrap_or_default(),
        ),
        kv("duration", fmt_dur(s.duration_ns())),
        kv(
            "status",
            format!("{:?} {}", s.status, s.status_message)
                .trim_end()
                .to_owned(),
        ),
    ];
    for (k, v) in &s.attributes {
        let v = match v {
            AttrValue::Str(s) => s.to_string(),
            other => other.to_string(),
        };
        out.push(kv(k, v));
    }
    out
}

fn draw_detail(f: &mut Frame, app: &mut App, area: Rect) {
    let Some(d) = &mut app.detail else {
        return;
    };
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(area);
    let t0 = d
        .lines
        .iter()
        .map(|l| l.span.start_unix_ns)
        .min()
        .unwrap_or(0);
    let rows: Vec<Row> = d.lines.iter().map(|l| tree_row(l, t0)).collect();
    let n = rows.len();
    d.selected = d.selected.min(n.saturating_sub(1));
    let mut state = TableState::default().with_selected(Some(d.selected));
    let trace = d
        .lines
        .first()
        .map(|l| hex::encode(l.span.trace_id))
        .unwrap_or_default();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(18),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(10),
        ],
    )
    .header(
        Row::new(["SPAN", "SERVICE", "KIND", "START", "DURATION", "STATUS"]).style(HEADER_STYLE),
    )
    .block(Block::bordered().title(format!(" trace {trace}: {n} spans seen ")))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, top, &mut state);
    let lines = d
        .lines
        .get(d.selected)
        .map(|l| attr_lines(&l.span))
        .unwrap_or_default();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" attributes ")),
        bottom,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::Limits;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn durations() {
        assert_eq!(fmt_dur(1_500), "1µs");
        assert_eq!(fmt_dur(2_500_000), "2.5ms");
        assert_eq!(fmt_dur(25_000_000), "25ms");
        assert_eq!(fmt_dur(2_500_000_000), "2.50s");
    }

    #[test]
    fn renders_every_tab() {
        use autotel_model::{Resource, SpanKind};
        use std::sync::Arc;
        let res = Arc::new(Resource {
            service_name: "web".into(),
            pid: 7,
            attributes: vec![],
        });
        let mut m = Model::new(Limits::default(), 0);
        for i in 0..20u64 {
            m.ingest(
                Span {
                    trace_id: [1; 16],
                    span_id: [i as u8 + 1; 8],
                    parent_span_id: None,
                    trace_state: String::new(),
                    name: if i % 2 == 0 { "GET /ok" } else { "GET /err" }.into(),
                    kind: SpanKind::Server,
                    start_unix_ns: 0,
                    end_unix_ns: 1_000_000,
                    attributes: vec![(
                        "http.response.status_code",
                        AttrValue::Int(if i % 2 == 0 { 200 } else { 500 }),
                    )],
                    status: if i % 2 == 0 {
                        StatusCode::Unset
                    } else {
                        StatusCode::Error
                    },
                    status_message: String::new(),
                    resource: res.clone(),
                },
                1000 + i,
            );
        }
        let mut term = Terminal::new(TestBackend::new(140, 30)).unwrap();
        let mut app = App::default();
        let screen = |term: &Terminal<TestBackend>| {
            let b = term.backend().buffer();
            (0..b.area.height)
                .map(|y| {
                    (0..b.area.width)
                        .map(|x| b[(x, y)].symbol().to_string())
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        term.draw(|f| draw(f, &mut app, &mut m, 2000)).unwrap();
        let s = screen(&term);
        assert!(s.contains("GET /ok") && s.contains("GET /err"), "{s}");
        assert!(s.contains("100.0%"), "{s}");
        assert!(s.contains("q  quit"), "{s}");
        for t in [Tab::Slow, Tab::Database, Tab::Dns] {
            app.tab = t;
            term.draw(|f| draw(f, &mut app, &mut m, 2000)).unwrap();
        }
        app.tab = Tab::Slow;
        term.draw(|f| draw(f, &mut app, &mut m, 2000)).unwrap();
        assert!(screen(&term).contains("FAILED"));
        app.on_key(
            crossterm::event::KeyEvent::from(crossterm::event::KeyCode::Enter),
            &m,
        );
        term.draw(|f| draw(f, &mut app, &mut m, 2000)).unwrap();
        let s = screen(&term);
        assert!(
            s.contains("10 spans seen") || s.contains("20 spans seen"),
            "{s}"
        );
        assert!(s.contains("http.response.status_code"), "{s}");
    }
}
