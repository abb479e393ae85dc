//! The view's state (tab, sort, selection, open trace) and what keys do to
//! it. No terminal here either: keys come in as crossterm events.

use super::model::{Model, SlowEntry, SortBy, TreeLine};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Services,
    Slow,
    Database,
    Dns,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Services, Tab::Slow, Tab::Database, Tab::Dns];

    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Services => "Services/routes",
            Tab::Slow => "Slow & failed",
            Tab::Database => "Database",
            Tab::Dns => "DNS",
        }
    }
}

/// A trace opened from the slow & failed list (a snapshot: it does not
/// change while open).
#[derive(Debug)]
pub struct Detail {
    pub lines: Vec<TreeLine>,
    pub selected: usize,
}

#[derive(Debug)]
pub struct App {
    pub tab: Tab,
    pub sort: SortBy,
    pub reverse: bool,
    /// Selected row per tab.
    pub selected: [usize; 4],
    /// Rows in the current tab at the last frame (for clamping).
    pub rows: usize,
    /// Visible table rows at the last frame (for PgUp/PgDn).
    pub page: usize,
    /// The slow & failed list as shown; refreshed each frame only while
    /// the selection is on the first row, so moving down freezes it.
    pub slow: Vec<SlowEntry>,
    pub detail: Option<Detail>,
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        App {
            tab: Tab::Services,
            sort: SortBy::Rate,
            reverse: false,
            selected: [0; 4],
            rows: 0,
            page: 10,
            slow: Vec::new(),
            detail: None,
            quit: false,
        }
    }
}

impl App {
    pub fn selected(&self) -> usize {
        self.selected[self.tab.index()]
    }

    /// Whether the slow list follows new entries (selection on top).
    pub fn slow_follows(&self) -> bool {
        self.selected[Tab::Slow.index()] == 0
    }

    fn move_by(&mut self, delta: isize) {
        if let Some(d) = &mut self.detail {
            let max = d.lines.len().saturating_sub(1);
            d.selected = (d.selected as isize + delta).clamp(0, max as isize) as usize;
            return;
        }
        let max = self.rows.saturating_sub(1);
        let s = &mut self.selected[self.tab.index()];
        *s = (*s as isize + delta).clamp(0, max as isize) as usize;
    }

    fn switch(&mut self, tab: Tab) {
        self.detail = None;
        self.tab = tab;
    }

    pub fn on_key(&mut self, key: KeyEvent, model: &Model) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let page = self.page.max(1) as isize;
        match key.code {
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => self.quit = true,
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc => self.detail = None,
            KeyCode::Tab => self.switch(Tab::ALL[(self.tab.index() + 1) % 4]),
            KeyCode::BackTab => self.switch(Tab::ALL[(self.tab.index() + 3) % 4]),
            KeyCode::Char(c @ '1'..='4') => self.switch(Tab::ALL[c as usize - '1' as usize]),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-page),
            KeyCode::PageDown => self.move_by(page),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX / 2),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Enter => {
                if self.detail.is_some() {
                    self.detail = None;
                } else if self.tab == Tab::Slow {
                    if let Some(e) = self.slow.get(self.selected()) {
                        let (lines, selected) = model.trace_of(&e.span);
                        self.detail = Some(Detail { lines, selected });
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::Limits;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn keys() {
        let m = Model::new(Limits::default(), 0);
        let mut a = App::default();
        a.on_key(key(KeyCode::Tab), &m);
        assert_eq!(a.tab, Tab::Slow);
        a.on_key(key(KeyCode::Char('4')), &m);
        assert_eq!(a.tab, Tab::Dns);
        a.on_key(key(KeyCode::Tab), &m);
        assert_eq!(a.tab, Tab::Services);
        a.rows = 50;
        a.page = 20;
        a.on_key(key(KeyCode::PageDown), &m);
        a.on_key(key(KeyCode::Down), &m);
        assert_eq!(a.selected(), 21);
        a.on_key(key(KeyCode::End), &m);
        assert_eq!(a.selected(), 49);
        a.on_key(key(KeyCode::PageUp), &m);
        a.on_key(key(KeyCode::Home), &m);
        assert_eq!(a.selected(), 0);
        a.on_key(key(KeyCode::Char('s')), &m);
        assert_eq!(a.sort, SortBy::Errors);
        a.on_key(key(KeyCode::Char('r')), &m);
        assert!(a.reverse);
        assert!(!a.quit);
        a.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), &m);
        assert!(a.quit);
    }
}
