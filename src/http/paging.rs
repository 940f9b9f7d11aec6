//! The paging parameters that history and the conversations listing share: a page size, and
//! a `before` cursor naming a message.

use axum::http::StatusCode;
use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use uuid::Uuid;

use super::ApiError;
use super::extract::QueryParams;
use crate::model::uuid_timestamp;
use crate::store::{Cursor, MessageStore};

/// `xxxxxxxx-xxxx-7xxx-xxxx-xxxxxxxxxxxx`.
const HYPHENATED_UUID_LEN: usize = 36;

/// The most items a page holds, whatever is asked.
pub const MAX_PAGE_SIZE: u32 = 100;

/// The page size named `name`: `default` when absent, at least 1, capped at [`MAX_PAGE_SIZE`].
/// The documents say 1 to 4,294,967,295 (`u32::MAX`): every one of those is taken, and capped.
pub fn page_size(params: &QueryParams, name: &str, default: u32) -> Result<u32, ApiError> {
    match params.get(name) {
        None => Ok(default),
        Some(size) => Ok(size
            .parse::<u32>()
            .ok()
            .filter(|size| *size >= 1)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be a whole number, 1 or more"))
            })?
            .min(MAX_PAGE_SIZE)),
    }
}

/// A page size as the documents describe it: every whole number [`page_size`] takes (it caps
/// them at [`MAX_PAGE_SIZE`]).
pub struct PageSize;

impl utoipa::PartialSchema for PageSize {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .maximum(Some(u32::MAX))
            .into()
    }
}

impl utoipa::ToSchema for PageSize {}

/// A `before` cursor as the documents describe it: what [`before`] takes, a hyphenated UUID v7
/// or 24 hex digits.
pub struct BeforeId;

impl utoipa::PartialSchema for BeforeId {
    fn schema() -> RefOr<Schema> {
        const HEX: &str = "[0-9A-Fa-f]";
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!(
                "^(?:{HEX}{{8}}-{HEX}{{4}}-7{HEX}{{3}}-{HEX}{{4}}-{HEX}{{12}}|{HEX}{{24}})$"
            )))
            .into()
    }
}

impl utoipa::ToSchema for BeforeId {}

/// A `before` cursor as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// A chatd id (UUID v7), which carries its own time: correct even for a message not yet
    /// in the store.
    At(Cursor),
    /// An id of the original's (an ObjectId), whose time only the store knows.
    Stored(String),
}

/// The `before` parameter, if sent: a UUID v7 or a 24-hex ObjectId.
pub fn before(params: &QueryParams) -> Result<Option<Before>, ApiError> {
    match params.get("before") {
        None => Ok(None),
        Some(id) => match v7_cursor(id) {
            Some(cursor) => Ok(Some(Before::At(cursor))),
            None if is_object_id(id) => Ok(Some(Before::Stored(id.to_ascii_lowercase()))),
            None => Err(ApiError::bad_request("before must be the id of a message")),
        },
    }
}

/// The cursor's position, looked up in the store for an id that does not carry it; an id the
/// store does not know is 404: well-formed, but naming nothing, so there is no page before it
/// (not a 400, which would say the request is malformed).
pub async fn locate(
    store: &dyn MessageStore,
    before: Option<Before>,
) -> Result<Option<Cursor>, ApiError> {
    match before {
        None => Ok(None),
        Some(Before::At(cursor)) => Ok(Some(cursor)),
        Some(Before::Stored(id)) => {
            store.locate(&id).await?.map(Some).ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "before: no message has this id")
            })
        }
    }
}

/// chatd's ids are UUID v7s, which carry their own `created_at`. Only the hyphenated form, the
/// one chatd sends (and the document's pattern admits), not the other spellings
/// `Uuid::parse_str` knows.
fn v7_cursor(id: &str) -> Option<Cursor> {
    if id.len() != HYPHENATED_UUID_LEN {
        return None;
    }
    let uuid = Uuid::parse_str(id)
        .ok()
        .filter(|uuid| uuid.get_version_num() == 7)?;
    Some(Cursor {
        created_at: uuid_timestamp(&uuid)?,
        id: uuid.to_string(),
    })
}

/// The original service's ids: 24 hex digits.
fn is_object_id(id: &str) -> bool {
    id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> QueryParams {
        QueryParams::parse(Some(query)).unwrap()
    }

    #[test]
    fn sizes_default_cap_and_refuse() {
        assert_eq!(page_size(&params(""), "limit", 20).unwrap(), 20);
        assert_eq!(page_size(&params("limit=7"), "limit", 20).unwrap(), 7);
        assert_eq!(page_size(&params("limit=1000"), "limit", 20).unwrap(), 100);
        assert_eq!(
            page_size(&params("limit=4294967295"), "limit", 20).unwrap(),
            100
        );
        for bad in [
            "limit=0",
            "limit=-5",
            "limit=1.5",
            "limit=x",
            "limit=",
            "limit=4294967296",
        ] {
            assert!(page_size(&params(bad), "limit", 20).is_err(), "{bad}");
        }
    }

    #[test]
    fn before_takes_a_v7_id_with_its_time_or_an_object_id() {
        let id = Uuid::now_v7();
        let Some(Before::At(cursor)) = before(&params(&format!("before={id}"))).unwrap() else {
            panic!("a cursor");
        };
        assert_eq!(cursor.id, id.to_string());
        assert_eq!(Some(cursor.created_at), uuid_timestamp(&id));
        assert_eq!(
            before(&params("before=65F1C0FFEE00000000000001")).unwrap(),
            Some(Before::Stored("65f1c0ffee00000000000001".into()))
        );
        assert_eq!(before(&params("x=1")).unwrap(), None);
        // Only the hyphenated spelling of a v7, the one chatd sends and the document admits.
        let other_spellings = [id.simple().to_string(), id.braced().to_string()];
        for bad in [
            "x",
            "00000000-0000-0000-0000-000000000000",
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "65f1c0ffee0000000000000g",
            &other_spellings[0],
            &other_spellings[1],
        ] {
            assert!(before(&params(&format!("before={bad}"))).is_err(), "{bad}");
        }
    }
}
