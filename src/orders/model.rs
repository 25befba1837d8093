//! Work-order types: the order, its eight states, and the events of its history.

use serde::{Deserialize, Serialize};

use crate::org::{GeoPoint, NodeIdx};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub u64);

impl std::fmt::Display for OrderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// 12345 government service hotline.
    #[serde(rename = "hotline_12345")]
    Hotline12345,
    #[serde(rename = "app")]
    App,
    /// Found by a grid worker on patrol.
    #[serde(rename = "grid_patrol")]
    GridPatrol,
    #[serde(rename = "referral_110")]
    Referral110,
    #[serde(rename = "referral_120")]
    Referral120,
    /// Another system (emergency command, video surveillance, …) through the REST API.
    #[serde(rename = "integration")]
    Integration,
    /// A governance task the hub's analysis pushed from a hotspot: not a citizen's request, so
    /// the analysis does not count it as one. Only the analysis takes orders in with it.
    #[serde(rename = "analysis")]
    Analysis,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hotline12345 => "hotline_12345",
            Source::App => "app",
            Source::GridPatrol => "grid_patrol",
            Source::Referral110 => "referral_110",
            Source::Referral120 => "referral_120",
            Source::Integration => "integration",
            Source::Analysis => "analysis",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Routine,
    Urgent,
    Emergency,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Routine, Priority::Urgent, Priority::Emergency];
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Routine => "routine",
            Priority::Urgent => "urgent",
            Priority::Emergency => "emergency",
        }
    }
}

/// The eight steps (八步工作法), as states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// 受理: taken in, held by the intake node.
    Intake,
    /// 分类转办: classified and dispatched; the holder has not acknowledged yet.
    Dispatched,
    /// 跟踪问效: the holder acknowledged and is working on it.
    InProgress,
    /// 督促落实: late; the holder and its superior were told, escalation follows.
    Supervised,
    /// 结果反馈: a result was reported and is being reviewed up the chain.
    ResultReported,
    /// 评价打分: rated satisfied by the intake node.
    Rated,
    /// 信息公示: a redacted summary is public.
    Published,
    /// 归档销号: closed.
    Archived,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Intake,
        State::Dispatched,
        State::InProgress,
        State::Supervised,
        State::ResultReported,
        State::Rated,
        State::Published,
        State::Archived,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            State::Intake => "intake",
            State::Dispatched => "dispatched",
            State::InProgress => "in_progress",
            State::Supervised => "supervised",
            State::ResultReported => "result_reported",
            State::Rated => "rated",
            State::Published => "published",
            State::Archived => "archived",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }
    /// Before a result: the states in which deadlines run.
    pub fn is_working(self) -> bool {
        matches!(
            self,
            State::Intake | State::Dispatched | State::InProgress | State::Supervised
        )
    }
}

/// Everything that can happen to an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Dispatch,
    Acknowledge,
    Return,
    Reassign,
    Escalate,
    Report,
    Review,
    Rate,
    Publish,
    Archive,
    /// The scheduler: past the deadline.
    Supervise,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Dispatch => "dispatch",
            Action::Acknowledge => "acknowledge",
            Action::Return => "return",
            Action::Reassign => "reassign",
            Action::Escalate => "escalate",
            Action::Report => "report",
            Action::Review => "review",
            Action::Rate => "rate",
            Action::Publish => "publish",
            Action::Archive => "archive",
            Action::Supervise => "supervise",
        }
    }
    /// Any action's name as stored in history, the scheduler's included.
    pub fn from_kind(s: &str) -> Option<Action> {
        if s == "supervise" {
            return Some(Action::Supervise);
        }
        if s == "create" {
            return Some(Action::Create);
        }
        Action::parse(s)
    }

    pub fn parse(s: &str) -> Option<Action> {
        [
            Action::Create,
            Action::Dispatch,
            Action::Acknowledge,
            Action::Return,
            Action::Reassign,
            Action::Escalate,
            Action::Report,
            Action::Review,
            Action::Rate,
            Action::Publish,
            Action::Archive,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    /// The org node (usually a grid) where the problem is.
    pub node: NodeIdx,
    pub point: Option<GeoPoint>,
    pub address: Box<str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporter {
    pub name: Box<str>,
    pub phone: Box<str>,
}

impl Reporter {
    /// The masked form every public view shows: family name and the phone's ends only.
    pub fn masked(&self) -> Reporter {
        let mut name = self.name.chars();
        let name = match name.next() {
            Some(first) => {
                let rest = name.count();
                format!("{first}{}", "*".repeat(rest.max(1)))
            }
            None => String::new(),
        };
        let digits: Vec<char> = self.phone.chars().collect();
        let phone = if digits.len() >= 7 {
            let keep_head = 3.min(digits.len() - 4);
            format!(
                "{}{}{}",
                digits[..keep_head].iter().collect::<String>(),
                "*".repeat(digits.len() - keep_head - 4),
                digits[digits.len() - 4..].iter().collect::<String>()
            )
        } else {
            "*".repeat(digits.len())
        };
        Reporter {
            name: name.into(),
            phone: phone.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub text: Box<str>,
    pub by: NodeIdx,
    pub at: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rating {
    /// 1 to 5.
    pub score: u8,
    pub satisfied: bool,
    pub comment: Box<str>,
    pub at: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    pub id: OrderId,
    pub source: Source,
    pub category: Box<str>,
    /// Why it happened, within the category (a levee, a blocked drain, …): set at intake or with
    /// the result, for the analysis.
    pub cause: Option<Box<str>>,
    pub description: Box<str>,
    pub place: Place,
    pub priority: Priority,
    pub reporter: Reporter,
    pub created_at: u64,
    pub updated_at: u64,
    /// When a result is due (Unix ms); supervision starts after it.
    pub due_at: u64,
    pub state: State,
    pub holder: NodeIdx,
    /// The dispatch path from the intake node (first) down to the holder; results travel back
    /// up it, each tier reviewing in turn.
    pub chain: Vec<NodeIdx>,
    pub acknowledged: bool,
    /// The chain when the result was reported, so a rejection or reopening goes back to the
    /// node that did the work.
    pub report_chain: Vec<NodeIdx>,
    pub result: Option<Outcome>,
    /// The intake node approved the result: the loop is closed at every tier.
    pub reviewed: bool,
    pub rating: Option<Rating>,
    pub summary: Option<Box<str>>,
    /// 0: on time; 1: supervised (late); 2: escalated after the second threshold.
    pub supervision: u8,
    /// Ever supervised: a reopening resets `supervision` for the new round, not this.
    pub late: bool,
    pub reopened: u16,
    /// Events so far; the next event's sequence number is `version + 1`.
    pub version: u32,
    pub closed_at: Option<u64>,
    /// Outbox sequence of the message that gave the holder this order, and when the holder
    /// opened it (read receipt).
    pub assigned_seq: Option<u64>,
    pub read_at: Option<u64>,
}

impl Order {
    /// The intake node: rates, publishes and archives.
    pub fn intake(&self) -> NodeIdx {
        self.chain.first().copied().unwrap_or(self.holder)
    }
}

/// What an event says beyond its action, all optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_state: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_state: Option<State>,
    /// Holder before and after (node ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approve: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub satisfied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// The work reported (report).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The cause found (report), when the reporter named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The public summary, already redacted (publish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The new deadline (reopened by an unsatisfied rating).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<u64>,
    /// Outbox sequence of the message that told the new holder (delivery receipts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
}

/// One entry of an order's append-only history.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub order: OrderId,
    pub seq: u32,
    pub at: u64,
    /// `None`: the hub itself (the deadline scheduler).
    pub actor: Option<NodeIdx>,
    pub action: Action,
    pub detail: Detail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporter_contact_is_masked() {
        let r = Reporter {
            name: "张伟".into(),
            phone: "13812345678".into(),
        };
        let m = r.masked();
        assert_eq!(&*m.name, "张*");
        assert_eq!(&*m.phone, "138****5678");
        let short = Reporter {
            name: "欧阳娜娜".into(),
            phone: "110".into(),
        }
        .masked();
        assert_eq!((&*short.name, &*short.phone), ("欧***", "***"));
    }
}
