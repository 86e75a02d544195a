//! The `credentials` table.

use sea_orm::entity::prelude::*;

/// One named credential; its secret parts sealed (AEAD) with the master key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// ssh, vault or become.
    pub kind: String,
    pub username: Option<String>,
    /// Public: the SSH key's fingerprint, or a keyed hash of a password.
    pub fingerprint: String,
    /// Hex nonce of the seal.
    pub nonce: String,
    /// Base64 of the sealed secret (JSON inside).
    #[sea_orm(column_type = "Text")]
    pub sealed: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
