//! Which local program a container image runs: the pod runner has no image
//! store, so one table maps each image (by repository, any registry prefix and
//! tag) to a program on this machine and the user it runs as when the pod
//! does not say.

use std::path::PathBuf;

/// One image's program (its entrypoint), and the other programs it carries.
#[derive(Debug, Clone)]
pub struct Program {
    pub path: PathBuf,
    /// The image's default UID and GID (its `USER`).
    pub user: (u32, u32),
    /// Other programs of the image, which a `command` names by file name
    /// (the divert image's `divert-proxy` beside its entrypoint `divert`).
    pub also: Vec<PathBuf>,
}

impl Program {
    /// The program a command's first word names: one of the image's when
    /// the word is its file name (`divert`, `/usr/local/bin/divert-proxy`),
    /// else the word itself, a path or a name found on this machine's PATH
    /// (`sleep`).
    pub fn named(&self, first: &str) -> PathBuf {
        let word = first.rsplit('/').next().unwrap_or(first);
        std::iter::once(&self.path)
            .chain(&self.also)
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == word))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(first))
    }
}

/// The table. Unknown images fail the pod (`ErrImagePull`, as a kubelet
/// reports an image it cannot pull).
#[derive(Debug, Clone, Default)]
pub struct Images {
    entries: Vec<(String, Program)>,
}

impl Images {
    /// Maps the repository `name` (`divert`, `hashicorp/http-echo`) to `path`.
    pub fn with(mut self, name: &str, path: PathBuf, user: (u32, u32)) -> Images {
        let program = Program {
            path,
            user,
            also: Vec::new(),
        };
        self.entries.push((name.to_string(), program));
        self
    }

    /// Adds `path` to the programs of image `name` (mapped before).
    pub fn also(mut self, name: &str, path: PathBuf) -> Images {
        if let Some((_, p)) = self.entries.iter_mut().find(|(n, _)| n == name) {
            p.also.push(path);
        }
        self
    }

    /// The program for `image` (`registry/repo:tag@digest`).
    pub fn lookup(&self, image: &str) -> Option<&Program> {
        let repo = repository(image);
        self.entries
            .iter()
            .find(|(name, _)| repo == name || repo.ends_with(&format!("/{name}")))
            .map(|(_, p)| p)
    }
}

/// `image` without its tag or digest.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    // A ':' after the last '/' starts the tag (one before it is a port).
    match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), Some(slash)) if colon > slash => &image[..colon],
        (Some(colon), None) => &image[..colon],
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_matched_by_repository_whatever_the_registry_and_tag() {
        let images = Images::default()
            .with("divert", PathBuf::from("/bin/divert"), (2102, 2102))
            .with("hashicorp/http-echo", PathBuf::from("/bin/app"), (0, 0));
        let path = |i: &str| images.lookup(i).map(|p| p.path.clone());
        assert_eq!(path("divert:0.1.0"), Some(PathBuf::from("/bin/divert")));
        assert_eq!(
            path("registry:5000/divert:0.1.0"),
            Some(PathBuf::from("/bin/divert"))
        );
        assert_eq!(
            path("hashicorp/http-echo:1.0"),
            Some(PathBuf::from("/bin/app"))
        );
        assert_eq!(
            path("docker.io/hashicorp/http-echo@sha256:ab"),
            Some(PathBuf::from("/bin/app"))
        );
        assert_eq!(path("notdivert:1"), None);
        assert_eq!(path("nginx"), None);
    }

    #[test]
    fn a_command_naming_the_image_program_runs_it_and_any_other_runs_from_this_machine() {
        let divert = Program {
            path: PathBuf::from("/build/debug/divert"),
            user: (2102, 2102),
            also: vec![PathBuf::from("/build/debug/divert-proxy")],
        };
        assert_eq!(divert.named("divert"), PathBuf::from("/build/debug/divert"));
        assert_eq!(
            divert.named("divert-proxy"),
            PathBuf::from("/build/debug/divert-proxy")
        );
        assert_eq!(
            divert.named("/usr/local/bin/divert"),
            PathBuf::from("/build/debug/divert")
        );
        assert_eq!(divert.named("sleep"), PathBuf::from("sleep"));
        assert_eq!(
            divert.named("/bin/divert-x"),
            PathBuf::from("/bin/divert-x")
        );
    }
}
