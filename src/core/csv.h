// Reading CSV files (RFC 4180) such as the MMLU question files: comma-separated fields, optional
// double quotes around a field, "" for a quote inside one, and commas and line breaks allowed
// inside quotes. Reads the same rows as Python's csv.reader with its default dialect.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kite {

using CsvRow = std::vector<std::string>;

// Splits `text` into rows of fields. Records end with "\n", "\r\n" or "\r"; the last one may have
// no line end. Field contents are kept byte for byte (a quoted field keeps its line breaks as
// written). An empty line is a row with no fields, as Python's csv module reads it. `source` names
// the text in error messages: an unterminated quoted field, or a character other than a comma or
// a line end right after a closing quote, is a kCorrupt error naming the line.
Result<std::vector<CsvRow>> parse_csv(std::string_view text, const std::string& source);

// Reads and parses the file at `path` (errors name the path).
Result<std::vector<CsvRow>> read_csv_file(const std::string& path);

}  // namespace kite
