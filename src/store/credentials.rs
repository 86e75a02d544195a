//! Named credentials as rows: what is public (name, kind, user,
//! fingerprint) in the clear, the secret sealed by the caller.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entities::credentials::{self, Column, Entity};
use super::{db_error, Store};
use crate::domain::credential::{CredentialInfo, CredentialKind};
use crate::domain::{from_micros, to_micros, Error};

/// A stored credential: its public part and its sealed secret.
#[derive(Debug, Clone)]
pub struct SealedCredential {
    pub info: CredentialInfo,
    pub nonce: String,
    pub sealed: String,
}

fn from_row(row: credentials::Model) -> Result<SealedCredential, Error> {
    Ok(SealedCredential {
        info: CredentialInfo {
            kind: row
                .kind
                .parse::<CredentialKind>()
                .map_err(|e| Error::internal(format!("decode credential {}", row.name), e))?,
            name: row.name,
            username: row.username,
            fingerprint: row.fingerprint,
            created_at: from_micros(row.created_at),
        },
        nonce: row.nonce,
        sealed: row.sealed,
    })
}

impl Store {
    /// Creates a credential, or replaces the one of that name.
    pub async fn put_credential(&self, credential: &SealedCredential) -> Result<(), Error> {
        let info = &credential.info;
        let row = credentials::ActiveModel {
            name: Set(info.name.clone()),
            kind: Set(info.kind.as_str().to_owned()),
            username: Set(info.username.clone()),
            fingerprint: Set(info.fingerprint.clone()),
            nonce: Set(credential.nonce.clone()),
            sealed: Set(credential.sealed.clone()),
            created_at: Set(to_micros(info.created_at)),
        };
        Entity::insert(row)
            .on_conflict(
                OnConflict::column(Column::Name)
                    .update_columns([
                        Column::Kind,
                        Column::Username,
                        Column::Fingerprint,
                        Column::Nonce,
                        Column::Sealed,
                        Column::CreatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(|e| db_error("store a credential", e))?;
        Ok(())
    }

    /// Every credential, by name.
    pub async fn credentials(&self) -> Result<Vec<SealedCredential>, Error> {
        Entity::find()
            .order_by_asc(Column::Name)
            .all(&self.db)
            .await
            .map_err(|e| db_error("list credentials", e))?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// The credentials of these names that exist.
    pub async fn credentials_named(
        &self,
        names: &[String],
    ) -> Result<Vec<SealedCredential>, Error> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        Entity::find()
            .filter(Column::Name.is_in(names.iter().cloned()))
            .all(&self.db)
            .await
            .map_err(|e| db_error("read credentials", e))?
            .into_iter()
            .map(from_row)
            .collect()
    }

    /// Deletes a credential; whether it existed.
    pub async fn delete_credential(&self, name: &str) -> Result<bool, Error> {
        let deleted = Entity::delete_by_id(name.to_owned())
            .exec(&self.db)
            .await
            .map_err(|e| db_error("delete a credential", e))?;
        Ok(deleted.rows_affected == 1)
    }
}
