//! The kinds of sensitive data the engine finds.

use std::fmt;

/// A kind of sensitive value. Names are the ones policies and audit
/// entries use (`EMAIL`, `US_SSN`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Email,
    Phone,
    UsSsn,
    CreditCard,
    Iban,
    IpAddress,
    DateOfBirth,
    MedicalRecordNumber,
    UsNpi,
    UsPassport,
    UsDriverLicense,
    Person,
    StreetAddress,
    AwsAccessKey,
    GoogleApiKey,
    PrivateKey,
    GithubToken,
    GitlabToken,
    SlackToken,
    StripeKey,
    OpenaiKey,
    AnthropicKey,
    Jwt,
    GenericSecret,
    /// A tenant's own pattern or deny-list entry.
    Custom,
}

/// What a kind of value is, for defaults by data class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Identifies a person.
    Pii,
    /// Identifies a patient or their care (HIPAA identifiers).
    Phi,
    /// A credential.
    Secret,
    Custom,
}

impl Entity {
    pub const ALL: &'static [Entity] = &[
        Self::Email,
        Self::Phone,
        Self::UsSsn,
        Self::CreditCard,
        Self::Iban,
        Self::IpAddress,
        Self::DateOfBirth,
        Self::MedicalRecordNumber,
        Self::UsNpi,
        Self::UsPassport,
        Self::UsDriverLicense,
        Self::Person,
        Self::StreetAddress,
        Self::AwsAccessKey,
        Self::GoogleApiKey,
        Self::PrivateKey,
        Self::GithubToken,
        Self::GitlabToken,
        Self::SlackToken,
        Self::StripeKey,
        Self::OpenaiKey,
        Self::AnthropicKey,
        Self::Jwt,
        Self::GenericSecret,
        Self::Custom,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
            Self::UsSsn => "US_SSN",
            Self::CreditCard => "CREDIT_CARD",
            Self::Iban => "IBAN",
            Self::IpAddress => "IP_ADDRESS",
            Self::DateOfBirth => "DATE_OF_BIRTH",
            Self::MedicalRecordNumber => "MEDICAL_RECORD_NUMBER",
            Self::UsNpi => "US_NPI",
            Self::UsPassport => "US_PASSPORT",
            Self::UsDriverLicense => "US_DRIVER_LICENSE",
            Self::Person => "PERSON",
            Self::StreetAddress => "STREET_ADDRESS",
            Self::AwsAccessKey => "AWS_ACCESS_KEY",
            Self::GoogleApiKey => "GOOGLE_API_KEY",
            Self::PrivateKey => "PRIVATE_KEY",
            Self::GithubToken => "GITHUB_TOKEN",
            Self::GitlabToken => "GITLAB_TOKEN",
            Self::SlackToken => "SLACK_TOKEN",
            Self::StripeKey => "STRIPE_KEY",
            Self::OpenaiKey => "OPENAI_KEY",
            Self::AnthropicKey => "ANTHROPIC_KEY",
            Self::Jwt => "JWT",
            Self::GenericSecret => "GENERIC_SECRET",
            Self::Custom => "CUSTOM",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.name() == name)
    }

    pub fn class(self) -> Class {
        match self {
            Self::Email
            | Self::Phone
            | Self::UsSsn
            | Self::CreditCard
            | Self::Iban
            | Self::IpAddress
            | Self::Person
            | Self::StreetAddress
            | Self::UsPassport
            | Self::UsDriverLicense => Class::Pii,
            Self::DateOfBirth | Self::MedicalRecordNumber | Self::UsNpi => Class::Phi,
            Self::AwsAccessKey
            | Self::GoogleApiKey
            | Self::PrivateKey
            | Self::GithubToken
            | Self::GitlabToken
            | Self::SlackToken
            | Self::StripeKey
            | Self::OpenaiKey
            | Self::AnthropicKey
            | Self::Jwt
            | Self::GenericSecret => Class::Secret,
            Self::Custom => Class::Custom,
        }
    }

    /// How many characters at the end a mask keeps.
    pub(crate) fn mask_keeps(self) -> usize {
        match self {
            Self::CreditCard | Self::UsSsn | Self::Phone | Self::Iban => 4,
            _ => 0,
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One sensitive value found in a text: its kind, its byte range in the
/// text as given (before normalisation) and how sure the engine is.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub entity: Entity,
    pub start: usize,
    pub end: usize,
    /// 0.0 to 1.0: the detector's base confidence, raised or lowered by
    /// context words nearby.
    pub score: f32,
    /// For `Custom` findings: the name of the tenant's pattern or list.
    pub label: Option<String>,
}

impl Finding {
    pub(crate) fn new(entity: Entity, start: usize, end: usize, score: f32) -> Self {
        Self {
            entity,
            start,
            end,
            score,
            label: None,
        }
    }

    /// The name placeholders and counts use: the custom label, or the
    /// entity's name.
    pub fn kind(&self) -> &str {
        self.label.as_deref().unwrap_or(self.entity.name())
    }
}
