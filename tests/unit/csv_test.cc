// Tests for the RFC 4180 CSV reader: quoting, line ends, empty fields and rows, and the errors.
#include "core/csv.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/file.h"
#include "test_util.h"

namespace kite {
namespace {

std::vector<CsvRow> parse_ok(std::string_view text) {
  auto rows = parse_csv(text, "test.csv");
  EXPECT_TRUE(rows.is_ok()) << rows.status().message();
  return rows.is_ok() ? *rows : std::vector<CsvRow>{};
}

TEST(CsvTest, PlainFieldsAndRows) {
  EXPECT_EQ(parse_ok("a,b,c\n1,2,3\n"), (std::vector<CsvRow>{{"a", "b", "c"}, {"1", "2", "3"}}));
}

TEST(CsvTest, LastRecordWithoutLineEnd) {
  EXPECT_EQ(parse_ok("a,b\nc,d"), (std::vector<CsvRow>{{"a", "b"}, {"c", "d"}}));
}

TEST(CsvTest, EmptyTextHasNoRows) {
  EXPECT_TRUE(parse_ok("").empty());
}

TEST(CsvTest, LineEndsCrLfAndCr) {
  EXPECT_EQ(parse_ok("a,b\r\nc\rd\n"), (std::vector<CsvRow>{{"a", "b"}, {"c"}, {"d"}}));
}

TEST(CsvTest, QuotedFieldsKeepCommasQuotesAndLineBreaks) {
  const auto rows =
      parse_ok("\"x, y\",\"say \"\"hi\"\"\",\"two\nlines\",\"crlf\r\nkept\"\nlast,row\n");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (CsvRow{"x, y", "say \"hi\"", "two\nlines", "crlf\r\nkept"}));
  EXPECT_EQ(rows[1], (CsvRow{"last", "row"}));
}

TEST(CsvTest, EmptyFields) {
  EXPECT_EQ(parse_ok(",\n\"\",a,\na,b,"),
            (std::vector<CsvRow>{{"", ""}, {"", "a", ""}, {"a", "b", ""}}));
}

TEST(CsvTest, EmptyLineIsARowWithNoFields) {
  EXPECT_EQ(parse_ok("a\n\nb\n"), (std::vector<CsvRow>{{"a"}, {}, {"b"}}));
}

TEST(CsvTest, QuoteInsideUnquotedFieldIsKept) {
  EXPECT_EQ(parse_ok("5\" screen,b\n"), (std::vector<CsvRow>{{"5\" screen", "b"}}));
}

TEST(CsvTest, Utf8AndSpacesAreKeptVerbatim) {
  EXPECT_EQ(parse_ok(" a , ü \"\n"), (std::vector<CsvRow>{{" a ", " ü \""}}));
}

TEST(CsvTest, UnterminatedQuoteIsAnErrorNamingTheLine) {
  auto rows = parse_csv("a,b\nc,\"never\nclosed\n", "questions.csv");
  ASSERT_FALSE(rows.is_ok());
  EXPECT_EQ(rows.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(rows.status().message().find("questions.csv: line 2"), std::string::npos)
      << rows.status().message();
  EXPECT_NE(rows.status().message().find("not closed"), std::string::npos);
}

TEST(CsvTest, CharacterAfterClosingQuoteIsAnError) {
  auto rows = parse_csv("ok\n\"a\nb\"c,d\n", "x.csv");
  ASSERT_FALSE(rows.is_ok());
  EXPECT_EQ(rows.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(rows.status().message().find("x.csv: line 3"), std::string::npos)
      << rows.status().message();
}

TEST(CsvTest, ReadsAFileAndReportsMissingOnes) {
  const std::string path = test::temp_dir() + "/rows.csv";
  ASSERT_TRUE(write_file(path, "q,\"A, or B\"\n").is_ok());
  auto rows = read_csv_file(path);
  ASSERT_TRUE(rows.is_ok()) << rows.status().message();
  EXPECT_EQ(*rows, (std::vector<CsvRow>{{"q", "A, or B"}}));

  auto missing = read_csv_file(path + ".missing");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("rows.csv.missing"), std::string::npos);
}

// The MMLU files are the reader's first user: every row of every file has the six columns
// question, A, B, C, D, answer, and the answer is a letter.
TEST(CsvTest, ReadsEveryMmluFile) {
  const std::filesystem::path mmlu = std::filesystem::path(test::data_dir()) / "mmlu";
  if (!std::filesystem::exists(mmlu)) GTEST_SKIP() << "no MMLU data at " << mmlu;
  size_t files = 0, rows_seen = 0;
  for (const char* split : {"dev", "val", "test"}) {
    for (const auto& entry : std::filesystem::directory_iterator(mmlu / split)) {
      if (entry.path().extension() != ".csv") continue;
      auto rows = read_csv_file(entry.path().string());
      ASSERT_TRUE(rows.is_ok()) << rows.status().message();
      ++files;
      for (size_t i = 0; i < rows->size(); ++i) {
        const CsvRow& row = (*rows)[i];
        ASSERT_EQ(row.size(), 6u) << entry.path() << " row " << i + 1;
        EXPECT_TRUE(row[5] == "A" || row[5] == "B" || row[5] == "C" || row[5] == "D")
            << entry.path() << " row " << i + 1 << ": answer '" << row[5] << "'";
      }
      rows_seen += rows->size();
    }
  }
  EXPECT_EQ(files, 57u * 3);
  EXPECT_EQ(rows_seen, 285u + 1542u + 14079u);
}

}  // namespace
}  // namespace kite
