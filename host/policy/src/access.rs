//! Who may do what: roles per team, and the one rule every route, console
//! page and button, and command that acts on a server asks.
//!
//! A principal (a person's session, an API token, a service account) holds
//! memberships: a [`TeamRole`] in one team, or in every team. [`may`] answers
//! "may this principal do `action` to something of `team`" from them alone,
//! so the console cannot show what the API would refuse, nor the reverse.

use std::fmt;

/// A role in a team. Each role may read the team's runs, stories and
/// approvals; beyond that:
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TeamRole {
    /// Reads only.
    Viewer,
    /// Decides the team's approvals.
    Approver,
    /// Starts runs of the team's stories (cancel and re-run as they land).
    Operator,
    /// Everything of the team, the policy view and the audit log of people.
    Admin,
}

impl TeamRole {
    pub const ALL: [TeamRole; 4] = [TeamRole::Viewer, TeamRole::Approver, TeamRole::Operator, TeamRole::Admin];

    pub fn name(self) -> &'static str {
        match self {
            TeamRole::Viewer => "viewer",
            TeamRole::Approver => "approver",
            TeamRole::Operator => "operator",
            TeamRole::Admin => "admin",
        }
    }

    /// A role by name, or an error naming the roles there are.
    pub fn parse(name: &str) -> Result<TeamRole, String> {
        TeamRole::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| {
            let names: Vec<&str> = TeamRole::ALL.iter().map(|r| r.name()).collect();
            format!("`{name}` is not a role; a role is one of {}", names.join(", "))
        })
    }

    /// Whether this role allows `action`.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Decide => matches!(self, TeamRole::Approver | TeamRole::Admin),
            Action::Start => matches!(self, TeamRole::Operator | TeamRole::Admin),
            Action::ReadPolicy | Action::ReadAuditLog => self == TeamRole::Admin,
        }
    }
}

impl fmt::Display for TeamRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a principal asks to do to something of a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See runs, stories, approvals, their audit.
    Read,
    /// Decide an approval.
    Decide,
    /// Start a run of a story.
    Start,
    /// See the policy (what each plugin is granted).
    ReadPolicy,
    /// See the audit log of what people did.
    ReadAuditLog,
}

impl Action {
    pub const ALL: [Action; 5] = [Action::Read, Action::Decide, Action::Start, Action::ReadPolicy, Action::ReadAuditLog];
}

/// One membership: `role` in `team` (`None`: in every team).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub team: Option<String>,
    pub role: TeamRole,
}

impl Membership {
    pub fn everywhere(role: TeamRole) -> Membership {
        Membership { team: None, role }
    }

    pub fn in_team(team: &str, role: TeamRole) -> Membership {
        Membership { team: Some(team.to_string()), role }
    }

    /// Whether the membership covers `team` (`None`: something of no one team,
    /// such as the whole policy, which only an every-team membership covers).
    fn covers(&self, team: Option<&str>) -> bool {
        match (&self.team, team) {
            (None, _) => true,
            (Some(mine), Some(t)) => mine == t,
            (Some(_), None) => false,
        }
    }
}

/// The one authorization rule: whether any of `memberships` allows `action` on
/// something of `team` (`None`: of no one team).
pub fn may(memberships: &[Membership], action: Action, team: Option<&str>) -> bool {
    memberships.iter().any(|g| g.covers(team) && g.role.allows(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_reads_its_own_team_and_nothing_of_another() {
        for role in TeamRole::ALL {
            let g = [Membership::in_team("soc", role)];
            assert!(may(&g, Action::Read, Some("soc")), "{role}");
            for action in Action::ALL {
                assert!(!may(&g, action, Some("intel")), "{role} {action:?} in another team");
            }
        }
    }

    #[test]
    fn only_approvers_and_admins_decide_only_operators_and_admins_start() {
        let can = |role, action| may(&[Membership::in_team("soc", role)], action, Some("soc"));
        assert_eq!(TeamRole::ALL.map(|r| can(r, Action::Decide)), [false, true, false, true]);
        assert_eq!(TeamRole::ALL.map(|r| can(r, Action::Start)), [false, false, true, true]);
        assert_eq!(TeamRole::ALL.map(|r| can(r, Action::ReadPolicy)), [false, false, false, true]);
        assert_eq!(TeamRole::ALL.map(|r| can(r, Action::ReadAuditLog)), [false, false, false, true]);
    }

    #[test]
    fn what_belongs_to_no_one_team_takes_a_membership_of_every_team() {
        assert!(!may(&[Membership::in_team("soc", TeamRole::Admin)], Action::ReadPolicy, None));
        assert!(may(&[Membership::everywhere(TeamRole::Admin)], Action::ReadPolicy, None));
        assert!(!may(&[Membership::everywhere(TeamRole::Viewer)], Action::ReadPolicy, None));
        assert!(!may(&[], Action::Read, Some("soc")));
    }

    #[test]
    fn a_role_name_outside_the_four_is_refused_naming_them() {
        assert_eq!(TeamRole::parse("approver"), Ok(TeamRole::Approver));
        let e = TeamRole::parse("Owner").unwrap_err();
        assert!(e.contains("viewer, approver, operator, admin"), "{e}");
    }
}
