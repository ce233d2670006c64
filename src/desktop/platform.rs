//! Where a desktop keeps its state and what it calls itself, per platform, through well-kept
//! crates (`directories`, `gethostname`) rather than Linux paths.

use std::path::PathBuf;

/// The default state directory: the per-user local data directory — `$XDG_DATA_HOME/hwpass`
/// (else `~/.local/share/hwpass`) on Linux, `%LOCALAPPDATA%\hwpass\data` on Windows,
/// `~/Library/Application Support/hwpass` on macOS. `None` when the platform has no home
/// directory for this user.
pub fn default_state_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "hwpass").map(|d| d.data_local_dir().to_path_buf())
}

/// This computer's name, as a request's default device name; `None` when it is empty or not
/// valid text.
pub fn host_name() -> Option<String> {
    gethostname::gethostname()
        .into_string()
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_named_for_hwpass() {
        let dir = default_state_dir().unwrap();
        assert!(dir.ends_with("hwpass"), "{}", dir.display());
        assert!(host_name().is_some());
    }
}
