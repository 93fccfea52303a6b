/*
 * migrations.h - the numbered SQL files of src/store/sql/<backend>/, embedded at build
 * time by scripts/embed_sql.py, in version order. Each is applied once, in a
 * transaction, and recorded in the schema_migrations table.
 */
#ifndef OTPD_STORE_MIGRATIONS_H
#define OTPD_STORE_MIGRATIONS_H

#include <stddef.h>

struct store_migration {
	int version;        /* from the file name: 0001_init.sql -> 1 */
	const char *name;   /* the file name */
	const char *sql;
};

extern const struct store_migration store_sqlite_migrations[];
extern const size_t store_sqlite_migrations_count;
extern const struct store_migration store_pg_migrations[];
extern const size_t store_pg_migrations_count;

#endif
