//! Which certificate names may sign attested data: Azure's IMDS endpoints,
//! `^(.*\.)?metadata\.(azure\.(com|us|cn)|microsoftazure\.de)$` (the list in
//! Azure's IMDS documentation, as Coder and Teleport enforce it).

/// The names the pattern allows, without the optional `<anything>.` prefix.
const IMDS_NAMES: [&str; 4] = [
    "metadata.azure.com",
    "metadata.azure.us",
    "metadata.azure.cn",
    "metadata.microsoftazure.de",
];

/// Whether `name` matches the pattern exactly (case-sensitive, like the regex;
/// the regex's `.` does not match a newline, so neither does the prefix here).
pub fn is_imds_signer(name: &str) -> bool {
    IMDS_NAMES.iter().any(|base| {
        name == *base
            || name
                .strip_suffix(base)
                .and_then(|prefix| prefix.strip_suffix('.'))
                .is_some_and(|prefix| !prefix.contains('\n'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_the_regex() {
        for good in [
            "metadata.azure.com",
            "southcentralus.metadata.azure.com",
            "usgovvirginia.metadata.azure.us",
            "a.b.metadata.azure.cn",
            "metadata.microsoftazure.de",
            ".metadata.azure.com",
        ] {
            assert!(is_imds_signer(good), "{good}");
        }
        for bad in [
            "",
            "metadata.azure.co",
            "xmetadata.azure.com",
            "metadata.azure.com.evil.example",
            "metadata.azure.de",
            "METADATA.AZURE.COM",
            "evil\n.metadata.azure.com",
            "metadata-azure.com",
        ] {
            assert!(!is_imds_signer(bad), "{bad:?}");
        }
    }
}
