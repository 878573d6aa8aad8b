//! The library: every story the host knows, loaded from a folder and checked
//! across stories (plugins exist, callees exist and allow the caller's team,
//! no story calls itself through others).

use super::{parse, StepKind, Story, StoryError, StoryErrors};
use crate::policy::Policy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// All stories the host knows, by name.
#[derive(Debug, Clone, Default)]
pub struct Library {
    pub stories: BTreeMap<String, Arc<Story>>,
}

impl Library {
    /// Loads every `*.yaml`, `*.yml` and `*.json` file in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Library, StoryErrors> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| StoryErrors(vec![StoryError { file: dir.display().to_string(), line: 0, message: format!("cannot read the stories folder: {e}") }]))?;
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")).collect();
        files.sort();
        Library::load_files(&files)
    }

    pub fn load_files(files: &[PathBuf]) -> Result<Library, StoryErrors> {
        let mut lib = Library::default();
        let mut errors = Vec::new();
        for f in files {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(StoryError { file: f.display().to_string(), line: 0, message: format!("cannot read: {e}") });
                    continue;
                }
            };
            match parse(&text, f) {
                Ok(story) => {
                    if let Some(prev) = lib.stories.get(&story.name) {
                        errors.push(StoryError {
                            file: f.display().to_string(),
                            line: story.line,
                            message: format!("story `{}` is also defined in {}; names must be unique", story.name, prev.file.display()),
                        });
                    } else {
                        lib.stories.insert(story.name.clone(), Arc::new(story));
                    }
                }
                Err(StoryErrors(e)) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(lib)
        } else {
            Err(StoryErrors(errors))
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Story>> {
        self.stories.get(name).cloned()
    }

    /// Cross-story checks: plugins exist in the policy, called stories exist
    /// and allow the caller's team, and no story calls itself through others.
    pub fn check(&self, policy: &Policy) -> Result<(), StoryErrors> {
        let mut errors = Vec::new();
        for story in self.stories.values() {
            let file = story.file.display().to_string();
            if !policy.teams.is_empty() && !policy.teams.contains_key(&story.team) {
                errors.push(StoryError {
                    file: file.clone(),
                    line: story.line,
                    message: format!("story `{}` belongs to team `{}`, which has no [teams.{}] in {}", story.name, story.team, story.team, policy.file),
                });
            }
            // The policy decides whose story this is; a story cannot claim a team.
            if !policy.teams.is_empty() {
                let message = match policy.team_of_story(&story.file) {
                    Some(owner) if owner == story.team => None,
                    Some(owner) => Some(format!(
                        "story `{}` says team `{}`, but {} gives this file to team `{owner}` ([teams.{owner}] stories); set `team: {owner}` or move the file",
                        story.name, story.team, policy.file
                    )),
                    None => Some(format!(
                        "story `{}` is in no team's `stories` in {}, so no team's grants may run it; add its file or folder to [teams.{}] stories",
                        story.name, policy.file, story.team
                    )),
                };
                if let Some(message) = message {
                    errors.push(StoryError { file: file.clone(), line: story.line, message });
                }
            }
            for s in story.all_steps() {
                match &s.kind {
                    StepKind::Action(p) if !policy.plugins.contains_key(p) => errors.push(StoryError {
                        file: file.clone(),
                        line: s.line,
                        message: format!(
                            "step `{}`: unknown plugin `{p}`; add [plugins.{p}] to {} (it has: {})",
                            s.id,
                            policy.file,
                            policy.plugins.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    }),
                    StepKind::Story(name) => match self.stories.get(name) {
                        None => errors.push(StoryError {
                            file: file.clone(),
                            line: s.line,
                            message: format!(
                                "step `{}`: unknown story `{name}` (known: {})",
                                s.id,
                                self.stories.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        }),
                        Some(callee) if callee.team != story.team && !callee.allow_callers.contains(&story.team) => errors.push(StoryError {
                            file: file.clone(),
                            line: s.line,
                            message: format!(
                                "step `{}`: story `{name}` belongs to team {} and does not allow team {} to call it; add `{}` to its allow_callers",
                                s.id, callee.team, story.team, story.team
                            ),
                        }),
                        Some(_) if story.graph().is_some() && self.waits(name, 0) => errors.push(StoryError {
                            file: file.clone(),
                            line: s.line,
                            message: format!(
                                "agent `{}`: story `{name}` can wait for an approval, which a graph story cannot do; send to a story without approval steps",
                                s.id
                            ),
                        }),
                        // A parked item would hold its siblings' results in memory, not in rows.
                        Some(_) if s.for_each.is_some() && self.waits(name, 0) => errors.push(StoryError {
                            file: file.clone(),
                            line: s.line,
                            message: format!(
                                "step `{}`: story `{name}` can wait for an approval, which a for_each step cannot do; call it once per step, without for_each",
                                s.id
                            ),
                        }),
                        Some(_) if story.steps().is_some_and(|b| b.fallbacks.iter().any(|f| f.id == s.id)) && self.waits(name, 0) => errors.push(StoryError {
                            file: file.clone(),
                            line: s.line,
                            message: format!(
                                "fallback `{}`: story `{name}` can wait for an approval, which a fallback cannot do; make it a step of its own",
                                s.id
                            ),
                        }),
                        Some(_) => {}
                    },
                    _ => {}
                }
            }
        }
        // Cycles: depth-first over story calls.
        for name in self.stories.keys() {
            let mut path = vec![name.clone()];
            if let Some(cycle) = self.find_cycle(name, &mut path) {
                let story = &self.stories[name];
                let msg = format!("story calls form a cycle: {}; a story cannot call itself, even through others", cycle.join(" → "));
                if !errors.iter().any(|e: &StoryError| e.message == msg) {
                    errors.push(StoryError { file: story.file.display().to_string(), line: story.line, message: msg });
                }
                break;
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(StoryErrors(errors))
        }
    }

    /// Whether story `name` (or a story it calls) has an approval step.
    pub fn waits(&self, name: &str, depth: usize) -> bool {
        let Some(story) = self.stories.get(name) else { return false };
        // Deeper than any real chain: a cycle, refused on its own.
        depth < 32
            && story.steps().into_iter().flat_map(|b| &b.steps).any(|s| match &s.kind {
                StepKind::Approval(_) => true,
                StepKind::Story(callee) => self.waits(callee, depth + 1),
                _ => false,
            })
    }

    fn find_cycle(&self, name: &str, path: &mut Vec<String>) -> Option<Vec<String>> {
        let story = self.stories.get(name)?;
        for s in story.all_steps() {
            if let StepKind::Story(callee) = &s.kind {
                if let Some(pos) = path.iter().position(|p| p == callee) {
                    let mut cycle = path[pos..].to_vec();
                    cycle.push(callee.clone());
                    return Some(cycle);
                }
                path.push(callee.clone());
                if let Some(c) = self.find_cycle(callee, path) {
                    return Some(c);
                }
                path.pop();
            }
        }
        None
    }
}
