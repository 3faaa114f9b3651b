//! Progress bars (indicatif), one way for every command: a template, a length, and hidden when
//! the caller shows nothing.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's template syntax).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(style(template));
    bar
}

/// [`bar`] when `shown`, else a hidden bar.
pub fn bar_if(shown: bool, len: u64, template: &str) -> ProgressBar {
    if shown {
        bar(len, template)
    } else {
        ProgressBar::hidden()
    }
}

/// The style of `template`; a template that does not parse falls back to indicatif's default
/// look rather than failing the command (templates are constants of this crate).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
