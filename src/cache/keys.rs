//! The names of the token cache's entries: one rule for every writer, reader and the
//! invalidation outbox.

use crate::owner::Owner;
use crate::redis_conn::Redis;
use crate::store::accounts::{Account, ConnectionRole};

/// The Redis key of an owner's compatibility account's entry (what a read naming no
/// account answers): `{prefix}:tok:{slug}:{owner segment}`. Built without
/// intermediate strings: it runs on every read.
pub fn entry_key(redis: &Redis, slug: &str, owner: &Owner) -> String {
    let mut key = key_start(redis, slug, 36);
    push_owner_segment(&mut key, owner);
    key
}

/// The key of a standard account's entry: the owner's key and `:{account id}`. The
/// owner is part of it, so a read naming another owner's account never finds it.
pub fn standard_key(redis: &Redis, slug: &str, owner: &Owner, account_id: &str) -> String {
    let mut key = key_start(redis, slug, 37 + account_id.len());
    push_owner_segment(&mut key, owner);
    key.push(':');
    key.push_str(account_id);
    key
}

/// The key of `account`'s own entry, by its role.
pub fn key_for(redis: &Redis, slug: &str, account: &Account) -> String {
    match account.role {
        ConnectionRole::Compatibility => entry_key(redis, slug, &account.owner),
        ConnectionRole::Standard => standard_key(redis, slug, &account.owner, &account.id),
    }
}

/// What [`key_for`] puts after the slug, as the invalidation outbox records it.
pub fn segment_for(account: &Account) -> String {
    let mut segment = owner_segment(&account.owner);
    if account.role == ConnectionRole::Standard {
        segment.push(':');
        segment.push_str(&account.id);
    }
    segment
}

/// The key of the entry whose [`owner_segment`] was recorded (`crate::invalidations`).
pub fn key_of(redis: &Redis, slug: &str, segment: &str) -> String {
    let mut key = key_start(redis, slug, segment.len());
    key.push_str(segment);
    key
}

/// The part of an entry's key that names its owner: a hash of the user and
/// organization ids for a user-owned account, `org:` and a hash of the organization
/// id for an organization-owned one. Hashed, so no separator inside an id can make
/// two owners collide; shaped differently, so a user and an organization never
/// share an entry.
pub fn owner_segment(owner: &Owner) -> String {
    let mut segment = String::with_capacity(36);
    push_owner_segment(&mut segment, owner);
    segment
}

fn key_start(redis: &Redis, slug: &str, rest: usize) -> String {
    let prefix = redis.prefix();
    let mut key = String::with_capacity(prefix.len() + slug.len() + 6 + rest);
    key.push_str(prefix);
    key.push_str(":tok:");
    key.push_str(slug);
    key.push(':');
    key
}

fn push_owner_segment(out: &mut String, owner: &Owner) {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    match owner {
        Owner::User { user_id, organization_id } => {
            hasher.update(user_id.as_bytes());
            hasher.update([0u8]);
            hasher.update(organization_id.as_deref().unwrap_or("\u{0}").as_bytes());
        }
        Owner::Organization { organization_id } => {
            out.push_str("org:");
            hasher.update(organization_id.as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut hash = [0u8; 32];
    // 16 bytes → 32 hex digits; the buffer is exactly that long, so this cannot fail.
    let _ = hex::encode_to_slice(&digest[..16], &mut hash);
    out.push_str(std::str::from_utf8(&hash).unwrap_or_default());
}
