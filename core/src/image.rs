//! The image model: which image types exist and how an image is identified.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One kind of leaf image. Each has its own Kafka topic and MongoDB collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    /// Potato leaves.
    Potato,
    /// Tomato leaves.
    Tomato,
    /// Pepper leaves.
    Pepper,
}

impl ImageType {
    /// Every image type, in a stable order.
    pub const ALL: [ImageType; 3] = [ImageType::Potato, ImageType::Tomato, ImageType::Pepper];

    /// The lowercase name used in URLs, config keys and default topic/collection names.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::Potato => "potato",
            ImageType::Tomato => "tomato",
            ImageType::Pepper => "pepper",
        }
    }

    /// The valid names, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for ImageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown image type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image type {0:?}; valid types are: {names}", names = ImageType::names())]
pub struct UnknownImageType(pub String);

impl FromStr for ImageType {
    type Err = UnknownImageType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownImageType(s.to_owned()))
    }
}

/// An image id: a positive integer that fits MongoDB's signed 64-bit integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ImageId(i64);

/// A value that is not a valid image id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image id must be an integer from 1 to {max}, got {0}", max = i64::MAX)]
pub struct InvalidImageId(pub String);

impl ImageId {
    /// Wraps `id` when it is at least 1.
    pub fn new(id: i64) -> Result<Self, InvalidImageId> {
        if id >= 1 {
            Ok(Self(id))
        } else {
            Err(InvalidImageId(id.to_string()))
        }
    }

    /// The id as stored in MongoDB.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The Kafka message key: the decimal id, UTF-8.
    pub fn key(self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ImageId {
    type Err = InvalidImageId;

    /// Parses a canonical decimal id: digits only, no sign, no leading zeros.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidImageId(s.chars().take(40).collect());
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
            return Err(bad());
        }
        s.parse::<i64>()
            .map_err(|_| bad())
            .and_then(|n| Self::new(n).map_err(|_| bad()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_type_round_trips_and_rejects_unknown() {
        for t in ImageType::ALL {
            assert_eq!(t.as_str().parse::<ImageType>(), Ok(t));
        }
        let err = "Potato".parse::<ImageType>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown image type \"Potato\"; valid types are: potato, tomato, pepper"
        );
    }

    #[test]
    fn image_id_parsing() {
        assert_eq!("42".parse::<ImageId>().unwrap().get(), 42);
        assert_eq!(
            "9223372036854775807".parse::<ImageId>().unwrap().get(),
            i64::MAX
        );
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "01",
            "1.0",
            "abc",
            "9223372036854775808",
            " 1",
        ] {
            assert!(
                bad.parse::<ImageId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(ImageId::new(0).is_err());
        assert_eq!(ImageId::new(7).unwrap().key(), "7");
    }
}
