//! The font of every picture `tools` draws (`shard show`, `plot`): DejaVu Sans Mono, compiled in so
//! that PNGs need no system font (licence: `assets/DejaVuSansMono.LICENSE`, Bitstream Vera).

use std::sync::Once;

pub const DEJAVU_SANS_MONO: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");

/// Registers the font with plotters as `sans-serif` (normal and bold); idempotent.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use plotters::style::{register_font, FontStyle};
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bytes are a valid TrueType file compiled in; a failure would be a build defect.
            if register_font("sans-serif", style, DEJAVU_SANS_MONO).is_err() {
                eprintln!("warning: the built-in font did not load; text will be missing");
            }
        }
    });
}
